"""Image pools and lineage: which images of which classes each model of the benchmark can read.

The cloud trains on `cloud_train` (all classes), chooses on `cloud_val`; the device receives
images of the `device` pool only (held out of the cloud's training, see
`edgekt.data.prepare_splits`); accuracy is read on `test`. Every pool is kept per class, and
every read is recorded, so what a model was built from is a fact of the run, not a promise:
`Pools.poisoned` swaps classes for traps that raise when read.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np

from edgekt.data import DataError, PreparedData, Split


class LineageError(RuntimeError):
    """A model's builder read images it must not see."""


class Trap:
    """Stands in for a class's images that must not be read: any use raises."""

    def __init__(self, pool: str, class_name: str):
        self.where = f"{pool} images of {class_name!r}"

    def _refuse(self, *_, **__):
        raise LineageError(f"{self.where} were read, but this model must never see them")

    __array__ = __getitem__ = __len__ = __iter__ = _refuse

    @property
    def shape(self):
        self._refuse()


class ClassPool:
    """One pool's images, per class name, with a record of the classes read from it."""

    def __init__(self, name: str, by_class: Mapping[str, np.ndarray]):
        self.name = name
        self._by_class = dict(by_class)
        self.read: set[str] = set()

    @classmethod
    def from_split(cls, name: str, split: Split) -> "ClassPool":
        return cls(name, {c: split.images[split.labels == i] for i, c in enumerate(split.class_names)})

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self._by_class)

    def images(self, class_name: str) -> np.ndarray:
        """The images of one class (recorded as read)."""
        if class_name not in self._by_class:
            raise DataError(f"the {self.name} pool: has no class {class_name!r} ({list(self._by_class)}); use the "
                            "data the cloud model was trained on")
        self.read.add(class_name)
        value = self._by_class[class_name]
        if isinstance(value, Trap):
            value._refuse()
        return value

    def count(self, class_name: str) -> int:
        value = self._by_class[class_name]
        return -1 if isinstance(value, Trap) else len(value)

    def take(self, classes: Sequence[str]) -> Split:
        """The images of `classes`, labelled 0..k-1 in the order given."""
        parts = [self.images(c) for c in classes]
        labels = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(parts)])
        return Split(np.concatenate(parts), labels, tuple(classes))

    def poisoned(self, classes: Iterable[str]) -> "ClassPool":
        """A copy whose `classes` are traps."""
        bad = set(classes)
        return ClassPool(self.name, {c: Trap(self.name, c) if c in bad else v for c, v in self._by_class.items()})


@dataclasses.dataclass
class Pools:
    """The benchmark's four disjoint pools."""

    cloud_train: ClassPool
    cloud_val: ClassPool
    device: ClassPool
    test: ClassPool
    class_names: tuple[str, ...]
    source: str

    @classmethod
    def from_prepared(cls, prepared: PreparedData) -> "Pools":
        """Pools from the cloud stage's split of the data (its validation, device pool, test).

        Raises:
          DataError: the data has no device pool, validation or test split.
        """
        missing = [n for n, s in (("device pool", prepared.device_pool), ("validation split", prepared.val),
                                  ("test split", prepared.test)) if s is None]
        if missing:
            raise DataError(f"{prepared.source}: the on-device benchmark needs a {', a '.join(missing)}; train the "
                            "cloud model with --device_pool_size > 0 and --val_size > 0")
        return cls(ClassPool.from_split("cloud-train", prepared.train), ClassPool.from_split("cloud-val", prepared.val),
                   ClassPool.from_split("device", prepared.device_pool), ClassPool.from_split("test", prepared.test),
                   tuple(prepared.class_names), prepared.source)

    def reset_reads(self) -> None:
        for pool in self.all():
            pool.read = set()

    def all(self) -> tuple[ClassPool, ...]:
        return self.cloud_train, self.cloud_val, self.device, self.test

    def reads(self) -> dict[str, list[str]]:
        """Classes read so far, per pool."""
        return {p.name: sorted(p.read, key=self.class_names.index) for p in self.all() if p.read}

    def poisoned(self, allowed: Sequence[str]) -> "Pools":
        """Pools in which every image outside the cloud pools' `allowed` classes is a trap:
        the device and test pools entirely, and the other classes of the cloud pools."""
        others = [c for c in self.class_names if c not in set(allowed)]
        return Pools(self.cloud_train.poisoned(others), self.cloud_val.poisoned(others),
                     self.device.poisoned(self.class_names), self.test.poisoned(self.class_names),
                     self.class_names, self.source)


@dataclasses.dataclass(frozen=True)
class DeviceData:
    """What the device receives for one class split and seed, drawn from the device pool.

    Labels are in the device's class order (old, new, unseen). `unseen_labels` and
    `unseen_val_labels` are the truth, read only by the true-label bound's training and by
    the final measurement; the protocol never chooses anything with them.
    """

    new_images: np.ndarray
    new_labels: np.ndarray
    val_images: np.ndarray          # old + new classes, labelled
    val_labels: np.ndarray
    replay_images: np.ndarray       # old classes, labelled, kept on the device
    replay_labels: np.ndarray
    kept_new_images: np.ndarray     # a few new-class images kept after the incremental update
    kept_new_labels: np.ndarray
    unseen_images: np.ndarray       # unlabelled on the device
    unseen_labels: np.ndarray
    unseen_val_images: np.ndarray   # unlabelled held-out images, scored by agreement with the cloud
    unseen_val_labels: np.ndarray


def draw_device_data(pool: ClassPool, device_classes: Sequence[str], old: Sequence[str], new: Sequence[str],
                     unseen: Sequence[str], *, new_per_class: int, val_per_class: int, replay_per_class: int,
                     unseen_per_class: int, unseen_val_per_class: int, seed: int) -> DeviceData:
    """Draws one seed's device data. Each class's images are shuffled with (seed, class) and
    cut into disjoint parts, so parts never overlap.

    Raises:
      DataError: a class has too few device-pool images for its role.
    """
    order = list(device_classes)

    def parts(c: str, *sizes: int) -> list[np.ndarray]:
        images = pool.images(c)
        need = sum(sizes)
        if len(images) < need:
            raise DataError(f"class {c!r}: has {len(images)} device-pool images, this protocol needs {need}; raise "
                            "the cloud's --device_pool_size or lower the per-class counts")
        perm = np.random.default_rng([seed, order.index(c), 17]).permutation(len(images))
        out, start = [], 0
        for size in sizes:
            out.append(images[np.sort(perm[start:start + size])])
            start += size
        return out

    def stack(chunks: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        images = np.concatenate([x for _, x in chunks])
        labels = np.concatenate([np.full(len(x), order.index(c), np.int64) for c, x in chunks])
        return images, labels

    new_train, new_val, replay, old_val, unseen_train, unseen_val = [], [], [], [], [], []
    for c in new:
        train_part, val_part = parts(c, new_per_class, val_per_class)
        new_train.append((c, train_part))
        new_val.append((c, val_part))
    for c in old:
        replay_part, val_part = parts(c, replay_per_class, val_per_class)
        replay.append((c, replay_part))
        old_val.append((c, val_part))
    for c in unseen:
        train_part, val_part = parts(c, unseen_per_class, unseen_val_per_class)
        unseen_train.append((c, train_part))
        unseen_val.append((c, val_part))
    kept = [(c, x[:replay_per_class]) for c, x in new_train]
    return DeviceData(*stack(new_train), *stack(old_val + new_val), *stack(replay), *stack(kept),
                      *stack(unseen_train), *stack(unseen_val))
