"""Strong augmentation for distillation streams: Keras's RandAugment policy drawn per image from
stateless seeds, and Cutout (DeVries & Taylor, 2017).

Keras's `RandAugment` draws its operations once per batch from a stateful seed generator. A
transfer set of three classes needs every image of a batch to look different, and a resumed run
must see the batches an uninterrupted one would have seen, so `PolicyAugment` keeps Keras's
operations and magnitudes but draws, per image, which `num_ops` operations apply, from a seed
that is a pure function of (run seed, epoch, batch).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.src.random.seed_generator import SeedGenerator


class _FoldingSeed(SeedGenerator):
    """A seed source for Keras's random ops that holds no variable: draw k returns
    `fold_in(base, k)`, so every draw of one traced batch differs and the whole batch is a pure
    function of `base`."""

    def __init__(self, base: tf.Tensor):  # no SeedGenerator.__init__: it would create a state variable
        self._base = base
        self._draws = 0

    def next(self, ordered: bool = True) -> tf.Tensor:
        self._draws += 1
        return tf.random.experimental.stateless_fold_in(self._base, self._draws)


class PolicyAugment(keras.layers.RandAugment):
    """RandAugment (Cubuk et al., 2020) with Keras's operations (shear, translation, rotation,
    brightness, colour, contrast, sharpness, posterisation, solarisation, auto-contrast,
    equalisation): each image gets `num_ops` operations drawn uniformly, each at a random
    magnitude up to `factor`, on raw 0-255 pixels."""

    def __init__(self, num_ops: int = 2, factor: float = 0.5, **kwargs):
        if num_ops < 1:
            raise ValueError(f"num_ops must be >= 1. Received: num_ops={num_ops}")
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1]. Received: factor={factor}")
        super().__init__(value_range=(0, 255), num_ops=num_ops, factor=factor, **kwargs)

    def augment(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """`images` [B, H, W, C] float32 in 0-255 -> the same shape, each image transformed by
        its own operations; `seed` an int64 [2] stateless seed."""
        if not self.built:
            self.build(images.shape)
        seeds = _FoldingSeed(tf.cast(seed, tf.int64))
        batch = tf.shape(images)[0]
        names = self._AUGMENT_LAYERS
        chosen = tf.random.stateless_uniform([self.num_ops, batch], seed=seeds.next(), maxval=len(names),
                                             dtype=tf.int32)
        out = images
        for i in range(self.num_ops):
            # Each operation transforms only the images that drew it (partition, transform, stitch).
            parts = tf.dynamic_partition(out, chosen[i], len(names))
            where = tf.dynamic_partition(tf.range(batch), chosen[i], len(names))
            done = []
            for k, name in enumerate(names):
                layer = getattr(self, name)
                transformation = layer.get_random_transformation(parts[k], training=True, seed=seeds)

                def transform(part=parts[k], layer=layer, transformation=transformation):
                    return tf.cast(layer.transform_images(part, transformation, training=True), out.dtype)

                # Some operations (auto-contrast) fail on an empty part: no image drew them.
                done.append(tf.cond(tf.shape(parts[k])[0] > 0, transform, lambda part=parts[k]: part))
            out = tf.ensure_shape(tf.dynamic_stitch(where, done), images.shape)
        return tf.clip_by_value(out, 0.0, 255.0)


def cutout(images: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    """Zeroes a `size` x `size` square per image, centred anywhere in the image (clipped at the
    borders), as in DeVries & Taylor's CIFAR recipe."""
    if size <= 0:
        return images
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    centre = tf.random.stateless_uniform([b, 2], seed=seed)
    cy = tf.cast(centre[:, 0] * tf.cast(h, tf.float32), tf.int32)
    cx = tf.cast(centre[:, 1] * tf.cast(w, tf.float32), tf.int32)
    half = size // 2
    rows = tf.range(h)[None, :]
    cols = tf.range(w)[None, :]
    in_rows = (rows >= (cy - half)[:, None]) & (rows < (cy - half + size)[:, None])
    in_cols = (cols >= (cx - half)[:, None]) & (cols < (cx - half + size)[:, None])
    box = tf.cast(in_rows[:, :, None] & in_cols[:, None, :], images.dtype)[..., None]
    return images * (1.0 - box)
