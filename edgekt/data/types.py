"""The in-memory form of a data set: uint8 image arrays and int labels, split by name."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from tflite_runtime_app.image_folder import DataError  # one error type for the app and the library

__all__ = ["DataError", "DataSplits", "Split", "make_split"]

class Split(NamedTuple):
    """One split of a data set.

    Attributes:
      images: uint8 array [N, H, W, 3], raw RGB pixels.
      labels: int64 array [N]; label i is `class_names[i]`.
      class_names: the class names shared by every split of the data set.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return (f"Split(images={self.images.shape} {self.images.dtype}, labels={self.labels.shape}, "
                f"classes={len(self.class_names)})")


class DataSplits(dict):
    """Split name ("train", "test", ...) -> `Split`, plus the data set's class names.

    A plain dict for the caller (`splits["train"].images`), with two attributes:
    `class_names` (sorted folder names for folder and archive sources, so label i means the
    same class in every split and every archive) and `source` (where it came from).
    """

    def __init__(self, splits: dict[str, Split], class_names: tuple[str, ...], source: str):
        super().__init__(splits)
        self.class_names = tuple(class_names)
        self.source = source

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v!r}" for k, v in self.items())
        return f"DataSplits({{{inner}}}, class_names={list(self.class_names)}, source={self.source!r})"


def make_split(images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> Split:
    """Builds a `Split`, checking shapes, dtypes and label range."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"images must have shape [N, H, W, 3]. Received: shape={images.shape}")
    if images.dtype != np.uint8:
        raise DataError(f"images must be uint8 pixels 0-255. Received: dtype={images.dtype}")
    if labels.shape != (images.shape[0],):
        raise DataError(f"labels must have shape [{images.shape[0]}] to match the images. "
                        f"Received: shape={labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        bad = labels[(labels < 0) | (labels >= len(class_names))][0]
        raise DataError(f"label {int(bad)} is outside the {len(class_names)} classes {list(class_names)}")
    return Split(images, labels, tuple(class_names))
