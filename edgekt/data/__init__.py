"""Image classification data: loading (folders, archives, CIFAR batches, tfds), splits, tf.data."""

from edgekt.data.image_tree import FLAT_SPLIT, decode_image
from edgekt.data.sources import load, load_for
from edgekt.data.splits import (PreparedData, class_indices, concat, hold_out_classes, images_sha256, labelled_unlabelled,
                                prepare_splits, select_classes, stratified_subset, train_val_split)
from edgekt.data.types import DataError, DataSplits, Split, make_split

__all__ = [
    "DataError", "DataSplits", "FLAT_SPLIT", "PreparedData", "Split", "class_indices", "concat", "decode_image",
    "hold_out_classes", "images_sha256", "labelled_unlabelled", "load", "load_for", "make_split", "prepare_splits", "select_classes", "stratified_subset",
    "train_val_split",
]
