"""Image-folder trees and archives as `DataSplits` (the reader itself is shared with the device
app: `tflite_runtime_app.image_folder`, which needs only numpy and Pillow)."""

from __future__ import annotations

from tflite_runtime_app.image_folder import (ARCHIVE_SUFFIXES, FLAT_SPLIT, SPLIT_NAMES, decode_image, is_archive,
                                             iter_archive, iter_directory, read_image_tree)

from edgekt.data.types import DataSplits, make_split

__all__ = ["ARCHIVE_SUFFIXES", "FLAT_SPLIT", "SPLIT_NAMES", "decode_image", "is_archive", "iter_archive",
           "iter_directory", "read_splits"]


def read_splits(entries, source: str, image_size=None, resize: bool = False) -> DataSplits:
    """`read_image_tree` as `DataSplits` (see `tflite_runtime_app.image_folder`); the pipelines
    have no --skip_bad_files, so errors do not advise it."""
    arrays, class_names = read_image_tree(entries, source, image_size=image_size, resize=resize, offer_skip=False)
    return DataSplits({name: make_split(images, labels, class_names) for name, (images, labels) in arrays.items()},
                      class_names, source)
