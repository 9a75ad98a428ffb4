"""edgekt.models (WRN from a spec) and edgekt.flops."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from edgekt import flops, models
from edgekt.models import saving

# Published counts (Zagoruyko & Komodakis 2016, Table/Fig.: WRN-28-10 36.5M, WRN-40-2 2.2M,
# WRN-16-4 2.7M, WRN-16-2 0.69M, WRN-16-1 0.17M), exact for bias-free convs + BN + FC bias.
PUBLISHED = {(16, 1): 175_066, (16, 2): 691_674, (16, 4): 2_748_890, (40, 2): 2_243_546, (28, 10): 36_479_194}


@pytest.mark.parametrize("depth,width", sorted(PUBLISHED))
def test_wrn_parameter_counts_match_published(depth, width):
    model = models.wrn(depth, width)
    assert flops.count_params(model) == PUBLISHED[(depth, width)]
    assert flops.count_params(model) == sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_wrn_28_10_flops_is_5_24_g():
    assert flops.count_flops(models.wrn(28, 10)) == 5_243_328_768


def test_flops_of_a_hand_computed_model():
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inp)        # 8*8*3*3*3*4 = 6912
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)          # 4*4*3*3*4 = 576
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(5)(x)                                              # 4*5 = 20
    cost = flops.model_cost(keras.Model(inp, out))
    assert cost.flops == 6912 + 576 + 20
    assert cost.params == 108 + (36 + 4) + 8 + 25
    assert "total" in cost.table()


def test_unsupported_layer_is_named():
    inp = keras.Input((8, 8, 3))
    out = keras.layers.Conv2DTranspose(2, 3, name="upsample")(inp)
    with pytest.raises(ValueError, match=r"layer .upsample. \(Conv2DTranspose\): cannot count its FLOPs, it is not "
                                         r"in edgekt.s layer table; use the known layer types \(.*Conv2D"):
        flops.model_cost(keras.Model(inp, out))


def _irregular_spec():
    B = models.BlockSpec
    return models.WRNSpec(
        stem=5,
        stages=((B(3, 5), B(7, 5)), (B(4, 9, stride=2, projection=True), B(2, 9)), (B(6, 11, 2, True), B(1, 11))),
        num_classes=10, name="pruned_wrn")


def test_irregular_wrn_round_trips_through_keras_file(tmp_path, small_cifar):
    spec = _irregular_spec()
    model = models.build_wrn(spec)
    images = small_cifar["test"].images.astype(np.float32)
    # Non-trivial BN statistics so the round trip checks them too.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.default_rng(0).normal(size=layer.moving_mean.shape))
    before = np.asarray(model(images))
    path = saving.save_model(model, str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(images)), before, rtol=1e-5, atol=1e-5)
    assert models.spec_from_model(loaded) == spec
    assert flops.count_params(loaded) == flops.count_params(model)


def test_model_takes_raw_uint8_pixels_and_normalises_inside(small_cifar):
    model = models.wrn(10, 1)
    raw = small_cifar["test"].images[:4]
    np.testing.assert_allclose(np.asarray(model.predict(raw, verbose=0)),
                               np.asarray(model(raw.astype(np.float32))), rtol=1e-5, atol=1e-5)
    norm = model.get_layer("normalize")(raw.astype(np.float32))
    expected = (raw - np.array(models.CIFAR10_MEAN)) / np.array(models.CIFAR10_STD)
    np.testing.assert_allclose(np.asarray(norm), expected, rtol=1e-4, atol=1e-4)


def test_spec_rejects_identity_shortcut_with_width_change():
    B = models.BlockSpec
    with pytest.raises(ValueError, match=r"stage1_block2: an identity shortcut needs stride 1 and conv2 equal to "
                                         r"the incoming stream width 8"):
        models.WRNSpec(stem=8, stages=((B(4, 8), B(4, 6)),))


@pytest.mark.parametrize("depth", [12, 3, 15])
def test_wrn_rejects_bad_depth(depth):
    with pytest.raises(ValueError, match=f"6n\\+4.*Received: depth={depth}"):
        models.wrn_spec(depth, 1)


def test_spec_from_model_refuses_other_models():
    inp = keras.Input((8, 8, 3))
    with pytest.raises(ValueError, match="not an edgekt WRN"):
        models.spec_from_model(keras.Model(inp, keras.layers.Flatten()(inp)))


def test_float32_copy_drops_mixed_policy_and_optimizer():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = models.wrn(10, 1)
    finally:
        keras.config.set_dtype_policy("float32")
    model.compile(optimizer="sgd", loss="mse")
    copy = saving.float32_copy(model)
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    assert not copy.compiled
