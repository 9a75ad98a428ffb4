"""tf.data input pipelines: seeded shuffling, pad-and-crop + flip augmentation, batching.

Training streams are a pure function of (seed, epoch): epoch e is shuffled with seed
(seed, e) and its batches are augmented with seeds (seed, e, batch), so a run resumed at
epoch k sees exactly the batches an uninterrupted run would have seen.

Models built by edgekt normalise inside the model (they take raw 0-255 RGB), so the
pipeline feeds raw pixels by default; `normalize=(mean, std)` standardises in the pipeline
for models that expect normalised input.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from edgekt.data import augment as augment_lib
from edgekt.data.types import DataError


def channel_stats(images: np.ndarray, max_images: int = 20000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images, in 0-255 units."""
    if images.ndim != 4 or len(images) == 0:
        raise DataError(f"channel_stats needs images [N, H, W, C] with N > 0. Received: shape={images.shape}")
    sample = images[:: max(1, len(images) // max_images)].astype(np.float64)
    mean = sample.mean(axis=(0, 1, 2))
    std = sample.std(axis=(0, 1, 2))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(max(v, 1e-3)), 4) for v in std)


def augment_batch(images: tf.Tensor, seed: tf.Tensor, pad: int = 4, flip: bool = True) -> tf.Tensor:
    """Random `pad`-pixel zero-pad-and-crop and horizontal flip, per example, vectorised.

    Args:
      images: [B, H, W, C] float tensor.
      seed: int64 [2] stateless seed.
      pad: padding in pixels on each side (0 disables cropping).
      flip: random horizontal flips.
    """
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    out = images
    if pad > 0:
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        offsets = tf.random.stateless_uniform([b, 2], seed=seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
        rows = offsets[:, :1] + tf.range(h)[None, :]
        cols = offsets[:, 1:] + tf.range(w)[None, :]
        out = tf.gather(padded, rows, axis=1, batch_dims=1)
        out = tf.gather(out, cols, axis=2, batch_dims=1)
    if flip:
        flip_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        do_flip = tf.random.stateless_uniform([b], seed=flip_seed) < 0.5
        out = tf.where(do_flip[:, None, None, None], tf.reverse(out, axis=[2]), out)
    return out


MIXES = ("none", "mixup", "cutmix")


def mix_batch(images: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, kind: str) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixes each example with its partner in the reversed batch, widening the inputs a
    teacher is queried on: "mixup" blends the images with a weight lam ~ U(0, 1) per example;
    "cutmix" pastes a box of the partner covering about (1 - lam) of the image. Float targets
    (one-hot) mix with the same weights; "none" returns the batch unchanged."""
    if kind == "none":
        return images, targets
    if kind not in MIXES:
        raise ValueError(f"mix must be one of {MIXES}. Received: {kind!r}")
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    partner = tf.reverse(images, axis=[0])
    lam = tf.random.stateless_uniform([b], seed=seed)
    if kind == "mixup":
        mixed = lam[:, None, None, None] * images + (1.0 - lam[:, None, None, None]) * partner
        share = lam
    else:
        side = tf.sqrt(1.0 - lam)
        bh = tf.cast(tf.round(side * tf.cast(h, tf.float32)), tf.int32)
        bw = tf.cast(tf.round(side * tf.cast(w, tf.float32)), tf.int32)
        corner = tf.random.stateless_uniform([b, 2], seed=tf.random.experimental.stateless_fold_in(seed, 2))
        top = tf.cast(corner[:, 0] * tf.cast(h - bh + 1, tf.float32), tf.int32)
        left = tf.cast(corner[:, 1] * tf.cast(w - bw + 1, tf.float32), tf.int32)
        rows = tf.range(h)[None, :]
        cols = tf.range(w)[None, :]
        in_rows = (rows >= top[:, None]) & (rows < (top + bh)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + bw)[:, None])
        box = tf.cast(in_rows[:, :, None] & in_cols[:, None, :], images.dtype)[..., None]
        mixed = images * (1.0 - box) + partner * box
        share = 1.0 - tf.cast(bh * bw, tf.float32) / tf.cast(h * w, tf.float32)
    if targets.dtype.is_floating:
        partner_t = tf.reverse(targets, axis=[0])
        targets = share[:, None] * targets + (1.0 - share[:, None]) * partner_t
    return mixed, targets


def _standardize(x: tf.Tensor, normalize) -> tf.Tensor:
    if normalize is None:
        return x
    mean, std = normalize
    return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _targets(labels: tf.Tensor, num_classes: int, one_hot: bool) -> tf.Tensor:
    return tf.one_hot(labels, num_classes) if one_hot else tf.cast(labels, tf.int32)


def train_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int, num_classes: int,
                  epochs: int, start_epoch: int = 0, seed: int = 0, augment: bool = True,
                  one_hot: bool = True, normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                  mix: str = "none", policy: bool = False, cutout: int = 0) -> tf.data.Dataset:
    """The training stream for epochs [start_epoch, epochs): shuffled, augmented (pad-and-crop
    and flip when `augment`; then, per image, the RandAugment policy when `policy` and a
    `cutout`-pixel Cutout square when > 0; see `edgekt.data.augment`), batched, and mixed within
    each batch by `mix` (see `mix_batch`).

    Each epoch yields `len(images) // batch_size` full batches (the remainder is dropped,
    a different remainder each epoch). Use `steps_per_epoch(...)` with `Model.fit`.
    """
    _check_arrays(images, labels, num_classes)
    if mix not in MIXES:
        raise DataError(f"mix must be one of {MIXES}. Received: {mix!r}")
    if len(images) < batch_size:
        raise DataError(f"the training set has {len(images)} images, fewer than one batch of {batch_size}")
    if not 0 <= start_epoch <= epochs:
        raise DataError(f"start_epoch must be in [0, {epochs}]. Received: {start_epoch}")
    if cutout < 0:
        raise DataError(f"cutout must be >= 0 pixels. Received: {cutout}")
    n = len(images)
    policy_layer = None
    if policy:
        policy_layer = augment_lib.PolicyAugment()
    images_t = tf.convert_to_tensor(images)
    labels_t = tf.convert_to_tensor(labels.astype(np.int32))

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=True)

        def prepare(index, batch_ids):
            x = tf.cast(tf.gather(images_t, batch_ids), tf.float32)
            batch_seed = tf.stack([tf.cast(seed, tf.int64) * 65_537 + epoch, index])
            if augment:
                x = augment_batch(x, batch_seed)
            if policy_layer is not None:
                x = policy_layer.augment(x, tf.random.experimental.stateless_fold_in(batch_seed, 11))
            if cutout:
                x = augment_lib.cutout(x, tf.random.experimental.stateless_fold_in(batch_seed, 13), cutout)
            y = _targets(tf.gather(labels_t, batch_ids), num_classes, one_hot)
            if mix != "none":
                x, y = mix_batch(x, y, tf.stack([tf.cast(seed, tf.int64) * 65_537 + epoch, index + 7_919]), mix)
            return _standardize(x, normalize), y

        return batches.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)

    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(one_epoch)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int, num_classes: int,
                 one_hot: bool = True, normalize: tuple[Sequence[float], Sequence[float]] | None = None,
                 ) -> tf.data.Dataset:
    """All examples in order, batched (the last batch may be short), no augmentation."""
    _check_arrays(images, labels, num_classes)
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32))).batch(batch_size)
    ds = ds.map(lambda x, y: (_standardize(tf.cast(x, tf.float32), normalize), _targets(y, num_classes, one_hot)),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return num_examples // batch_size


def _check_arrays(images: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if images.ndim != 4:
        raise DataError(f"images must be [N, H, W, C]. Received: shape={images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"labels must be [{len(images)}]. Received: shape={labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels must be in [0, {num_classes}). Received: min={labels.min()}, max={labels.max()}")
