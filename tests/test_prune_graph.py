"""edgekt.prune.graph (dependency groups) and edgekt.prune.surgery (exact removal)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from edgekt import flops, models
from edgekt.models import saving
from edgekt.prune import UnsupportedModelError, build_graph, prune_model
from edgekt.prune.allocation import CostModel

from prune_models import mobilenet_style, randomize_batchnorm, vgg_style, zero_channels


def _group_by_producer(graph, name):
    return next(g for g in graph.groups if name in g.producers)


def test_wrn_residual_stream_is_one_group_with_all_its_convs():
    graph = build_graph(models.wrn(16, 1))
    stream = _group_by_producer(graph, "stem_conv")
    assert stream.producers == ["stem_conv", "stage1_block1_conv2", "stage1_block2_conv2"]
    assert {c for c, _ in stream.consumers} == {"stage1_block1_conv1", "stage1_block2_conv1", "stage2_block1_conv1",
                                                "stage2_block1_shortcut"}
    assert "stage1_block2_bn1" in stream.passthrough and "stage2_block1_bn1" in stream.passthrough
    last = _group_by_producer(graph, "stage3_block1_shortcut")
    assert ("logits", 1) in last.consumers and "final_bn" in last.passthrough
    assert [g.reason for g in graph.groups if not g.prunable] == ["model input", "model output"]
    assert len(graph.prunable_groups()) == 9  # 3 streams + 6 inner convs


def test_flatten_consumer_counts_spatial_features():
    graph = build_graph(vgg_style())
    last_conv = _group_by_producer(graph, "conv2")
    assert ("fc1", 16) in last_conv.consumers  # 4x4 positions per channel after three 2x poolings


@pytest.fixture(scope="module")
def trained_wrn(small_cifar):
    """A WRN-10-1 trained briefly on real images (non-trivial weights and BN statistics)."""
    keras.utils.set_random_seed(0)
    model = models.wrn(10, 1, num_classes=3)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tr = small_cifar["train"]
    model.fit(tr.images.astype(np.float32), tr.labels, batch_size=8, epochs=3, verbose=0)
    return model


def _exactness(model, images, fraction=0.4, seed=0):
    rng = np.random.default_rng(seed)
    graph = build_graph(model)
    keep = {}
    for g in graph.prunable_groups():
        drop = rng.choice(g.channels, max(1, int(fraction * g.channels)), replace=False)
        zero_channels(model, graph, g.id, drop)
        keep[g.id] = np.setdiff1d(np.arange(g.channels), drop)
    before = np.asarray(model(images, training=False))
    pruned = prune_model(model, keep, graph)
    after = np.asarray(pruned(images, training=False))
    return before, after, pruned, graph, keep


def test_surgery_is_exact_on_a_trained_wrn(trained_wrn, small_cifar):
    images = small_cifar["test"].images.astype(np.float32)
    model = saving.float32_copy(trained_wrn)
    before, after, pruned, graph, keep = _exactness(model, images)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert flops.count_params(pruned) < 0.5 * flops.count_params(model)
    spec = models.spec_from_model(pruned)
    assert spec.stem == len(keep[_group_by_producer(graph, "stem_conv").id])
    assert not any(np.all(w == 0) for w in pruned.get_weights() if w.ndim > 1)  # nothing zero left behind


@pytest.mark.parametrize("builder", [vgg_style, mobilenet_style], ids=["vgg_style", "mobilenet_style"])
def test_surgery_is_exact_on_custom_models(builder, small_cifar):
    keras.utils.set_random_seed(1)
    model = builder()
    randomize_batchnorm(model)
    images = small_cifar["test"].images.astype(np.float32)
    before, after, pruned, _, _ = _exactness(model, images, fraction=0.3)
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    assert pruned.count_params() < model.count_params()
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in model.layers]


def test_surgery_never_changes_the_callers_model():
    model = vgg_style()
    before = [w.copy() for w in model.get_weights()]
    graph = build_graph(model)
    g = graph.prunable_groups()[0]
    prune_model(model, {g.id: [0, 1]}, graph)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("builder", [lambda: models.wrn(16, 2), vgg_style, mobilenet_style])
def test_cost_model_matches_counts_of_the_built_pruned_model(builder):
    model = builder()
    graph = build_graph(model)
    rng = np.random.default_rng(0)
    keep = {g.id: np.sort(rng.choice(g.channels, max(1, g.channels // 3), replace=False))
            for g in graph.prunable_groups()}
    pruned = prune_model(model, keep, graph)
    expected = flops.model_cost(pruned)
    assert CostModel(graph).count({gid: len(k) for gid, k in keep.items()}) == (expected.params, expected.flops)
    assert CostModel(graph).count() == (flops.count_params(model), flops.count_flops(model))


def test_pruned_model_round_trips_through_keras_file(tmp_path, small_cifar):
    model = mobilenet_style()
    graph = build_graph(model)
    pruned = prune_model(model, {g.id: [0, 2, 3] for g in graph.prunable_groups()}, graph)
    path = saving.save_model(pruned, str(tmp_path / "p.keras"))
    images = small_cifar["test"].images[:4].astype(np.float32)
    np.testing.assert_allclose(np.asarray(keras.models.load_model(path)(images)), np.asarray(pruned(images)),
                               rtol=1e-5, atol=1e-5)


def test_sequential_models_are_pruned_too():
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, name="c"),
                              keras.layers.ReLU(name="r"), keras.layers.GlobalAveragePooling2D(name="g"),
                              keras.layers.Dense(4, name="d")])
    graph = build_graph(model)
    (group,) = graph.prunable_groups()
    pruned = prune_model(model, {group.id: [1, 5]}, graph)
    assert pruned.get_layer("c").filters == 2 and pruned.get_layer("d").kernel.shape == (2, 4)


def test_unsupported_layer_is_named_before_any_work():
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inp)
    b = keras.layers.Conv2D(4, 3, padding="same", name="b")(inp)
    out = keras.layers.Concatenate(name="joined")([a, b])
    with pytest.raises(UnsupportedModelError,
                       match=r"layer 'joined' \(Concatenate\) cannot be pruned: layer type Concatenate has no pruning "
                             r"rule; build the model from supported layers"):
        build_graph(keras.Model(inp, out))


def test_grouped_convolution_and_shared_layers_are_refused():
    inp = keras.Input((8, 8, 4))
    out = keras.layers.Conv2D(4, 3, groups=2, name="grouped")(inp)
    with pytest.raises(UnsupportedModelError, match=r"'grouped' \(Conv2D\) cannot be pruned: grouped convolution"):
        build_graph(keras.Model(inp, out))
    shared = keras.layers.Conv2D(4, 1, name="shared")
    x = shared(inp)
    with pytest.raises(UnsupportedModelError, match=r"layer 'shared' is called 2 times"):
        build_graph(keras.Model(inp, shared(x)))


def test_surgery_refuses_empty_groups_and_unprunable_groups():
    model = vgg_style()
    graph = build_graph(model)
    g = graph.prunable_groups()[0]
    with pytest.raises(ValueError, match=r"would keep 0 of 12 channels"):
        prune_model(model, {g.id: []}, graph)
    out_group = graph.group_of_output("logits")
    with pytest.raises(ValueError, match=r"cannot be pruned: model output"):
        prune_model(model, {out_group.id: [0]}, graph)
    with pytest.raises(ValueError, match=r"has channels 0..11. Received: index 12"):
        prune_model(model, {g.id: [12]}, graph)
