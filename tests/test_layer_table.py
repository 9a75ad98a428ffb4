"""edgekt.models.layers: every class in the layer table goes through the graph, the counts,
the surgery and the device trainer, and each of them does what the table says."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from edgekt import flops
from edgekt.export.device_trainer import DeviceTrainer, TrainerOptions, UnsupportedOnDeviceError
from edgekt.models import layers
from edgekt.prune import UnsupportedModelError, build_graph, prune_model
from edgekt.prune.allocation import CostModel

from prune_models import randomize_batchnorm, zero_channels

L = keras.layers
_C = 6  # channels of the group under test ("make")


def _merge(cls):
    def build(x, inp):
        other = L.Conv2D(_C, 1, padding="same", name="other")(inp)
        return getattr(L, cls)(name="under_test")([x, other])
    return build


# class -> how the layer under test is applied to the 8x8x6 tensor `x` (`inp`: the image);
# each returns the tensor the rest of the model reads.
_BUILDERS = {
    "InputLayer": lambda x, inp: x,
    "Conv2D": lambda x, inp: L.Conv2D(5, 3, padding="same", name="under_test")(x),
    "SeparableConv2D": lambda x, inp: L.SeparableConv2D(5, 3, padding="same", name="under_test")(x),
    "Dense": lambda x, inp: L.Dense(5, name="under_test")(x),
    "DepthwiseConv2D": lambda x, inp: L.DepthwiseConv2D(3, padding="same", name="under_test")(x),
    "BatchNormalization": lambda x, inp: L.BatchNormalization(name="under_test")(x),
    "Normalization": lambda x, inp: L.Normalization(mean=np.linspace(-1, 1, _C), variance=np.linspace(0.5, 2, _C),
                                                    name="under_test")(x),
    "PReLU": lambda x, inp: L.PReLU(alpha_initializer=keras.initializers.RandomUniform(0.1, 0.3, seed=0),
                                    shared_axes=[1, 2], name="under_test")(x),
    "ReLU": lambda x, inp: L.ReLU(name="under_test")(x),
    "Activation": lambda x, inp: L.Activation("relu", name="under_test")(x),
    "LeakyReLU": lambda x, inp: L.LeakyReLU(0.2, name="under_test")(x),
    "ELU": lambda x, inp: L.ELU(name="under_test")(x),
    "Softmax": None,  # below: at the output, where a softmax is allowed
    "Dropout": lambda x, inp: L.Dropout(0.5, name="under_test")(x),
    "SpatialDropout2D": lambda x, inp: L.SpatialDropout2D(0.5, name="under_test")(x),
    "GaussianNoise": lambda x, inp: L.GaussianNoise(0.1, name="under_test")(x),
    "GaussianDropout": lambda x, inp: L.GaussianDropout(0.1, name="under_test")(x),
    "ActivityRegularization": lambda x, inp: L.ActivityRegularization(l1=0.01, name="under_test")(x),
    "Identity": lambda x, inp: L.Identity(name="under_test")(x),
    "Rescaling": lambda x, inp: L.Rescaling(0.5, offset=0.25, name="under_test")(x),
    "MaxPooling2D": lambda x, inp: L.MaxPooling2D(2, name="under_test")(x),
    "AveragePooling2D": lambda x, inp: L.AveragePooling2D(2, name="under_test")(x),
    "GlobalAveragePooling2D": lambda x, inp: L.GlobalAveragePooling2D(name="under_test", keepdims=True)(x),
    "GlobalMaxPooling2D": lambda x, inp: L.GlobalMaxPooling2D(name="under_test", keepdims=True)(x),
    "ZeroPadding2D": lambda x, inp: L.ZeroPadding2D(1, name="under_test")(x),
    "Cropping2D": lambda x, inp: L.Cropping2D(1, name="under_test")(x),
    "Add": _merge("Add"),
    "Subtract": _merge("Subtract"),
    "Multiply": _merge("Multiply"),
    "Average": _merge("Average"),
    "Maximum": _merge("Maximum"),
    "Minimum": _merge("Minimum"),
    "Flatten": None,  # below: read by a Dense
    "Concatenate": lambda x, inp: L.Concatenate(name="under_test")([x, L.Conv2D(2, 1, name="other")(inp)]),
    "Reshape": lambda x, inp: L.Reshape((8, 8, _C), name="under_test")(x),
    "LayerNormalization": lambda x, inp: L.LayerNormalization(name="under_test")(x),
}


def _model(cls: str) -> keras.Model:
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(_C, 3, padding="same", name="make")(inp)
    x = L.BatchNormalization(name="make_bn")(x)
    if cls == "Flatten":
        y = L.Flatten(name="under_test")(x)
        return keras.Model(inp, L.Dense(3, name="logits")(y))
    if cls == "Softmax":
        y = L.Dense(3, name="logits")(L.GlobalAveragePooling2D(name="gap")(x))
        return keras.Model(inp, L.Softmax(name="under_test")(y))
    y = _BUILDERS[cls](x, inp)
    y = L.Conv2D(4, 1, name="use")(y)
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(inp, L.Dense(3, name="logits")(y))


def _images(n=4):
    return np.random.default_rng(1).uniform(0, 1, (n, 8, 8, 3)).astype(np.float32)


def test_every_class_has_a_test_model():
    assert set(_BUILDERS) == set(layers.LAYERS)


@pytest.mark.parametrize("cls", sorted(layers.LAYERS))
def test_every_table_class_through_graph_counts_surgery_and_export(cls):
    kind = layers.LAYERS[cls]
    model = _model(cls)
    randomize_batchnorm(model)
    assert cls in {type(layer).__name__ for layer in model.layers}

    # Counts: every class is counted; parameters are the trainable values.
    cost = flops.model_cost(model)
    assert cost.params == sum(int(np.prod(v.shape)) for v in model.trainable_weights)

    if kind.role is None:
        with pytest.raises(UnsupportedModelError, match=f"'under_test' \\({cls}\\) cannot be pruned.*no pruning rule"):
            build_graph(model)
        with pytest.raises(UnsupportedOnDeviceError, match=f"'under_test' \\({cls}\\)"):
            DeviceTrainer(model, TrainerOptions(batch_size=2))
        return

    # Graph: the conv's channels form a prunable group, and the budget's cost model agrees
    # with the counts of the built model, before and after surgery.
    graph = build_graph(model)
    group = next(g for g in graph.groups if "make" in g.producers)
    assert group.prunable, group.reason
    assert CostModel(graph).count() == (cost.params, cost.flops)

    # Surgery: removing channels made zero and unread leaves the outputs unchanged.
    drop, keep = [1, 4], [0, 2, 3, 5]
    zero_channels(model, graph, group.id, drop)
    before = np.asarray(model(_images(), training=False))
    pruned = prune_model(model, {group.id: keep}, graph)
    np.testing.assert_allclose(np.asarray(pruned(_images(), training=False)), before, rtol=1e-5, atol=1e-5)
    after = flops.model_cost(pruned)
    assert CostModel(graph).count({group.id: len(keep)}) == (after.params, after.flops)
    assert after.params < cost.params

    # Export: the device trainer takes exactly the classes the table marks, and computes what
    # Keras computes.
    if kind.device:
        trainer = DeviceTrainer(pruned, TrainerOptions(batch_size=4))
        out = trainer.infer(_images())
        # A model ending in a softmax gives probabilities; the others give logits.
        got = out["probabilities" if cls == "Softmax" else "logits"].numpy()
        np.testing.assert_allclose(got, before, rtol=1e-4, atol=1e-4)
    else:
        with pytest.raises(UnsupportedOnDeviceError, match=f"'under_test' \\({cls}\\)"):
            DeviceTrainer(pruned, TrainerOptions(batch_size=4))


def test_a_softmax_inside_the_network_keeps_its_channels():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2D(_C, 3, padding="same", name="make")(inp)
    x = L.Softmax(name="mix")(x)
    y = L.Dense(3, name="logits")(L.GlobalAveragePooling2D()(x))
    graph = build_graph(keras.Model(inp, y))
    group = next(g for g in graph.groups if "make" in g.producers)
    assert not group.prunable and "'mix' (Softmax) mixes all of these channels" in group.reason


def test_an_unknown_class_is_refused_everywhere_with_the_same_list():
    inp = keras.Input((8, 8, 3))
    x = L.Conv2DTranspose(4, 3, name="up")(inp)
    model = keras.Model(inp, L.Dense(3)(L.GlobalAveragePooling2D()(x)))
    with pytest.raises(UnsupportedModelError, match="'up' \\(Conv2DTranspose\\) cannot be pruned"):
        build_graph(model)
    with pytest.raises(ValueError, match=r"layer 'up' \(Conv2DTranspose\): cannot count its FLOPs, it is not in edgekt's layer table"):
        flops.model_cost(model)
    with pytest.raises(UnsupportedOnDeviceError, match="'up' \\(Conv2DTranspose\\)"):
        DeviceTrainer(model, TrainerOptions(batch_size=1))


def test_models_never_import_pruning():
    import ast
    import os

    import edgekt.models

    folder = os.path.dirname(edgekt.models.__file__)
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(folder, name)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(m.startswith(("edgekt.prune", "edgekt.export", "pipelines")) for m in modules), (name, modules)
