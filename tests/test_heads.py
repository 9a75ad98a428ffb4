"""The device's head initialisers, augmentation and the transfer set's batch mixing, against
values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tflite_runtime_app import heads
from tflite_runtime_app.train import augment


def test_imprint_sets_new_rows_from_centred_mean_embeddings_by_hand():
    # Two known classes with columns of norm 2 and 4 (mean 3), biases 1 and 3 (mean 2).
    kernel = np.array([[2.0, 0.0, 0.01], [0.0, 4.0, 0.01]], np.float32)
    bias = np.array([1.0, 3.0, 0.0], np.float32)
    features = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]], np.float32)
    weights = np.array([[1.0], [1.0], [0.0]], np.float32)  # images 0 and 1 speak for class 2
    new_kernel, new_bias = heads.imprint(kernel, bias, features, weights, rows=[2], known=[0, 1])
    # Centred features: mean (4/3, 2/3) -> (-1/3, -2/3), (5/3, -2/3), (-4/3, 4/3); unit vectors:
    u0 = np.array([-1, -2]) / np.sqrt(5)
    u1 = np.array([5, -2]) / np.sqrt(29)
    direction = (u0 + u1) / np.linalg.norm(u0 + u1)
    np.testing.assert_allclose(new_kernel[:, 2], 3.0 * direction, rtol=1e-5)
    np.testing.assert_array_equal(new_kernel[:, :2], kernel[:, :2])
    # Bias: mean over the class's images of (best known logit - new row's logit).
    known_best = np.array([max(2 * 1 + 1, 0 + 3), max(2 * 3 + 1, 0 + 3)])  # 3, 7
    own = features[:2] @ new_kernel[:, 2]
    assert new_bias[2] == pytest.approx(float(np.mean(known_best - own)), rel=1e-5)
    np.testing.assert_array_equal(new_bias[:2], bias[:2])
    # The inputs are not modified.
    assert kernel[0, 2] == np.float32(0.01) and bias[2] == 0.0


def test_imprint_weights_images_and_skips_rows_without_weight():
    kernel = np.eye(3, 4, dtype=np.float32)
    features = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    weights = np.array([[0.0, 0.0], [0.0, 0.0], [0.5, 0.0]], np.float32)
    new_kernel, new_bias = heads.imprint(kernel, None, features, weights, rows=[3, 2], known=[0, 1])
    assert new_bias is None
    centred = features[2] - features.mean(axis=0)
    np.testing.assert_allclose(new_kernel[:, 3], centred / np.linalg.norm(centred), rtol=1e-5)
    np.testing.assert_array_equal(new_kernel[:, 2], kernel[:, 2])  # no image speaks for row 2


def test_imprint_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="features"):
        heads.imprint(np.zeros((3, 2)), None, np.zeros((4, 5)), np.zeros((4, 1)), [1], [0])
    with pytest.raises(ValueError, match="weights"):
        heads.imprint(np.zeros((3, 2)), None, np.zeros((4, 3)), np.zeros((4, 2)), [1], [0])
    with pytest.raises(ValueError, match="known"):
        heads.imprint(np.zeros((3, 2)), None, np.zeros((4, 3)), np.zeros((4, 1)), [1], [])


class _FakeModel:
    """A DeviceModel stand-in: features are the images' first two pixels, linear classifier."""

    path = "fake.tflite"

    def __init__(self):
        self.class_names = ["a", "b", "c", "d"]
        self.meta = {"new_class_names": ["c", "d"], "classifier_weights": {"kernel": "k", "bias": "b"}}
        self.w = {"k": np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], np.float32),
                  "b": np.zeros(4, np.float32)}

    def features(self, images):
        return images.reshape(len(images), -1)[:, :2]

    def get_weights(self):
        return {k: v.copy() for k, v in self.w.items()}

    def set_weights(self, w):
        self.w = w


def test_imprint_unlearned_picks_unlearned_classes_with_targets():
    model = _FakeModel()
    assert heads.initial_learned(model) == ["a", "b"]
    images = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [3.0, 1.0]], np.float32)
    labels = np.array([0, 1, 2, 2])
    out = heads.imprint_unlearned(model, images, labels, ["a", "b"])
    assert out == {"imprinted": ["c"], "images": 2}
    # Centred on all four images (mean (1.5, 1)): class c's images give (0.5, 1) and (1.5, 0).
    u = np.array([0.5, 1.0]) / np.hypot(0.5, 1.0) + np.array([1.0, 0.0])
    np.testing.assert_allclose(model.w["k"][:, 2], u / np.linalg.norm(u), rtol=1e-5)  # known columns' norm: 1
    np.testing.assert_array_equal(model.w["k"][:, 3], 0.0)  # no image of d
    assert heads.learned_after(model, labels, ["a", "b"]) == ["a", "b", "c"]
    # Soft targets: the top class decides, its probability weighs; learned classes are left alone.
    soft = np.array([[0.1, 0.1, 0.2, 0.6], [0.7, 0.1, 0.1, 0.1]], np.float32)
    before = model.get_weights()
    out = heads.imprint_unlearned(model, images[:2], soft, ["a", "b", "c"])
    assert out["imprinted"] == ["d"] and out["images"] == 1
    np.testing.assert_array_equal(model.w["k"][:, 2], before["k"][:, 2])


def test_augment_flips_and_shifts_deterministically():
    images = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1) + 1
    assert augment(images, "none", np.random.default_rng(0)) is images
    flipped = augment(images, "flip", np.random.default_rng(3))
    for src, out in zip(images, flipped):
        assert np.array_equal(out, src) or np.array_equal(out, src[:, ::-1])
    shifted = augment(images, "flip_crop", np.random.default_rng(5), pad=1)
    again = augment(images, "flip_crop", np.random.default_rng(5), pad=1)
    np.testing.assert_array_equal(shifted, again)
    assert shifted.shape == images.shape
    # Every kept pixel comes from the image (or is padding): values are a subset plus zeros.
    for src, out in zip(images, shifted):
        assert set(np.unique(out)) <= set(np.unique(src)) | {0.0}


def test_mix_batch_mixup_and_cutmix_mix_targets_like_images():
    import tensorflow as tf

    from edgekt.data.pipeline import mix_batch

    b = 6
    values = np.arange(1, b + 1, dtype=np.float32)
    images = tf.constant(np.broadcast_to(values[:, None, None, None], (b, 8, 8, 3)).copy())
    targets = tf.constant(np.eye(b, dtype=np.float32))  # target j = image j
    seed = tf.constant([3, 4], tf.int64)
    for kind in ("mixup", "cutmix"):
        mixed, mixed_t = mix_batch(images, targets, seed, kind)
        mixed, mixed_t = mixed.numpy(), mixed_t.numpy()
        # The mean pixel of each mixed image equals its targets' weighting of the source values.
        np.testing.assert_allclose(mixed.mean(axis=(1, 2, 3)), mixed_t @ values, rtol=1e-5)
        np.testing.assert_allclose(mixed_t.sum(axis=1), 1.0, rtol=1e-6)
        # Each image mixes with its partner in the reversed batch only.
        for i in range(b):
            assert set(np.nonzero(mixed_t[i] > 1e-6)[0]) <= {i, b - 1 - i}
        if kind == "cutmix":  # pixels are copied, not blended
            assert set(np.unique(mixed)) <= set(values)
    same, same_t = mix_batch(images, targets, seed, "none")
    assert same is images and same_t is targets
    with pytest.raises(ValueError, match="mix must be"):
        mix_batch(images, targets, seed, "blend")
