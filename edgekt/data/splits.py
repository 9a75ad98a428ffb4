"""Deterministic class and sample splits for the experiments (all from a seed)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Iterable, Sequence

import numpy as np

from edgekt.data.types import DataError, DataSplits, Split


def _take(split: Split, index: np.ndarray, class_names=None) -> Split:
    return Split(split.images[index], split.labels[index], split.class_names if class_names is None else class_names)


def class_indices(split_or_names, classes: Iterable[int | str]) -> list[int]:
    """Maps class names or indices to indices, checking each one exists."""
    names = tuple(getattr(split_or_names, "class_names", split_or_names))
    out = []
    for c in classes:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not 0 <= int(c) < len(names):
                raise DataError(f"class index {c}: outside 0..{len(names) - 1}; use an index or a name of {list(names)}")
            out.append(int(c))
        elif isinstance(c, str):
            if c not in names:
                raise DataError(f"class {c!r}: not a class of the data; use one of {list(names)}")
            out.append(names.index(c))
        else:
            raise DataError(f"class {c!r}: neither a name nor an index; use one of {list(names)}")
    if len(set(out)) != len(out):
        raise DataError(f"classes {list(classes)}: some are listed twice; list each class once")
    return out


def _stratified_pick(labels: np.ndarray, count: int | float, seed: int) -> np.ndarray:
    """Picks `count` items (or that fraction) spread evenly over the classes present."""
    n = len(labels)
    if isinstance(count, float):
        if not 0.0 <= count <= 1.0:
            raise DataError(f"fraction must be in [0, 1]. Received: {count}")
        count = int(round(count * n))
    if not 0 <= count <= n:
        raise DataError(f"{count} of {n} examples: cannot pick more than there are; ask for at most {n}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    # Largest-remainder allocation keeps class proportions and hits `count` exactly.
    sizes = np.array([len(p) for p in per_class], dtype=np.float64)
    quota = sizes * count / max(n, 1)
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: count - take.sum()]:
        take[i] += 1
    picked = np.concatenate([p[:k] for p, k in zip(per_class, take)]) if len(per_class) else np.array([], int)
    return np.sort(picked)


def stratified_subset(split: Split, count: int | float, seed: int = 0) -> Split:
    """A class-balanced subset of `count` examples (int) or that fraction (float)."""
    return _take(split, _stratified_pick(split.labels, count, seed))


def train_val_split(split: Split, val_size: int | float, seed: int = 0) -> tuple[Split, Split]:
    """Holds out a class-balanced validation set; returns (train, val)."""
    val_idx = _stratified_pick(split.labels, val_size, seed)
    mask = np.ones(len(split.labels), bool)
    mask[val_idx] = False
    return _take(split, np.flatnonzero(mask)), _take(split, val_idx)


def select_classes(split: Split, classes: Sequence[int | str], relabel: bool = False) -> Split:
    """Keeps the examples of `classes`.

    Args:
      split: the data.
      classes: names or indices of the classes to keep.
      relabel: renumber the kept classes 0..k-1 in the order given, and keep only their
        names; otherwise labels and class names are unchanged.
    """
    idx = class_indices(split, classes)
    keep = np.flatnonzero(np.isin(split.labels, idx))
    if not relabel:
        return _take(split, keep)
    remap = np.full(len(split.class_names), -1, np.int64)
    remap[idx] = np.arange(len(idx))
    return Split(split.images[keep], remap[split.labels[keep]], tuple(split.class_names[i] for i in idx))


def hold_out_classes(split: Split, classes: Sequence[int | str]) -> tuple[Split, Split]:
    """Splits into (examples of the other classes, examples of `classes`); labels unchanged."""
    idx = class_indices(split, classes)
    held = np.isin(split.labels, idx)
    return _take(split, np.flatnonzero(~held)), _take(split, np.flatnonzero(held))


def labelled_unlabelled(split: Split, labelled: int | float, seed: int = 0,
                        classes: Sequence[int | str] | None = None) -> tuple[Split, Split]:
    """Splits each class's images into a labelled and an unlabelled pool.

    Args:
      split: the data.
      labelled: images per class that stay labelled (int), or that fraction (float).
      seed: the random seed.
      classes: restrict to these classes (default all).

    Returns:
      (labelled, unlabelled). The unlabelled pool keeps its true labels so that accuracy
      can be measured; callers must not train on them.
    """
    if isinstance(labelled, float) and not 0.0 <= labelled <= 1.0:
        raise DataError(f"labelled fraction must be in [0, 1]. Received: {labelled}")
    chosen = class_indices(split, classes) if classes is not None else sorted(set(split.labels.tolist()))
    rng = np.random.default_rng(seed)
    lab, unl = [], []
    for c in chosen:
        members = rng.permutation(np.flatnonzero(split.labels == c))
        k = int(round(labelled * len(members))) if isinstance(labelled, float) else int(labelled)
        if not 0 <= k <= len(members):
            raise DataError(f"class {split.class_names[c]!r}: has {len(members)} images, cannot keep {k} labelled; ask for "
                            "fewer or add images")
        lab.append(members[:k])
        unl.append(members[k:])
    return (_take(split, np.sort(np.concatenate(lab)) if lab else np.array([], int)),
            _take(split, np.sort(np.concatenate(unl)) if unl else np.array([], int)))


def images_sha256(images: np.ndarray) -> str:
    """sha256 of an image array's pixels: identifies a pool (e.g. the device pool) across stages."""
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def concat(*splits: Split) -> Split:
    """Concatenates splits that share class names."""
    names = {s.class_names for s in splits}
    if len(names) != 1:
        raise DataError(f"cannot concatenate splits with different class names: {sorted(names)}")
    return Split(np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]),
                 splits[0].class_names)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """The splits a stage works with: train (after hold-outs and subsetting), val, test, and the
    device pool (images held out of the cloud's training for on-device learning experiments)."""

    train: Split
    val: Split | None
    test: Split | None
    class_names: tuple[str, ...]
    source: str
    device_pool: Split | None = None

    def content_digest(self) -> str:
        """sha256 of every split's images and labels and of the class names: what identifies the
        data a resumed run must match, whatever path it was read from."""
        cached = self.__dict__.get("_digest")
        if cached is not None:
            return cached
        h = hashlib.sha256(json.dumps(list(self.class_names)).encode())
        for name in ("train", "val", "test", "device_pool"):
            split = getattr(self, name)
            h.update(name.encode())
            if split is None:
                continue
            for array in (split.images, split.labels):
                a = np.ascontiguousarray(array)
                h.update(f"{a.dtype.str}{list(a.shape)}".encode())
                h.update(memoryview(a).cast("B"))
        digest = h.hexdigest()
        object.__setattr__(self, "_digest", digest)
        return digest


# The device pool is drawn with its own seed offset so that adding it leaves the validation
# split of a given (val_size, seed) unchanged.
DEVICE_POOL_SEED_OFFSET = 7919


def prepare_splits(splits: DataSplits, *, val_size: int, seed: int, train_size: int | None = None,
                   test_size: int | None = None, device_pool_size: int = 0, batch_size: int = 1) -> PreparedData:
    """Holds out a class-balanced validation split and a class-balanced device pool of `train`,
    and takes optional subsets of what is left.

    Every stage calls this with the cloud stage's `val_size`, `device_pool_size` and `seed`, so
    they all see the same validation images and the same device pool, none of which the
    teacher trained on. Validation, device pool and train are disjoint.

    `batch_size`: the stage's batch; fewer training images than one batch are refused.

    Raises:
      DataError: the source has no training split, or the hold-outs leave fewer training
        images than one batch.
    """
    if "train" not in splits:
        raise DataError(f"{splits.source}: no 'train' split (splits: {sorted(splits)}); put the training images "
                        "under train/<class>/")
    if len(splits.class_names) < 2:
        raise DataError(f"{splits.source}: has {len(splits.class_names)} class ({', '.join(splits.class_names)}); a "
                        "classifier needs at least 2 (one would score 100% by always answering it); add a folder of "
                        "images per class")
    if device_pool_size < 0:
        raise DataError(f"device_pool_size={device_pool_size}: must be >= 0; pass a count >= 0")
    n = len(splits["train"].labels)
    left = n - (val_size or 0) - device_pool_size
    if left < max(batch_size, 1):
        held = f"val_size={val_size or 0}" + (f" + device_pool_size={device_pool_size}" if device_pool_size else "")
        leaves = "leaves no training images" if left <= 0 else f"leaves {left}, fewer than one batch of {batch_size}"
        raise DataError(f"{splits.source}: the train split has {n} images; holding out {held} {leaves}; pass a "
                        "smaller --val_size"
                        f"{' or --device_pool_size' if device_pool_size else ''} or --batch_size, or more training "
                        "images")
    train, val, pool = splits["train"], None, None
    if val_size:
        train, val = train_val_split(train, val_size, seed=seed)
    if device_pool_size:
        if device_pool_size >= len(train.labels):
            raise DataError(f"{splits.source}: a device pool of {device_pool_size} images leaves no training images "
                            f"({len(train.labels)} after the validation hold-out); use a smaller --device_pool_size")
        train, pool = train_val_split(train, device_pool_size, seed=seed + DEVICE_POOL_SEED_OFFSET)
    if train_size is not None and train_size < len(train.labels):
        train = stratified_subset(train, train_size, seed=seed)
    test = splits.get("test")
    if test is not None and test_size is not None and test_size < len(test.labels):
        test = stratified_subset(test, test_size, seed=seed)
    return PreparedData(train, val, test, splits.class_names, splits.source, device_pool=pool)
