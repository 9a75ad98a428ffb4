"""`load(source)`: one entry point for every data source, with the decoded-array cache."""

from __future__ import annotations

import os
import time

from absl import logging

from edgekt.data import cache, cifar_batches, image_tree, tfds_source
from edgekt.data.types import DataError, DataSplits, make_split


def load(source: str | os.PathLike, *, cache_dir: str | None = None, use_cache: bool = True,
         image_size: tuple[int, int] | None = None, resize: bool = False,
         tfds_data_dir: str | None = None) -> DataSplits:
    """Loads an image classification data set as uint8 arrays.

    Args:
      source: one of
        - a `.tar.gz`/`.tgz`/`.tar`/`.zip` archive or a folder holding `train/` and/or
          `test/` class folders, possibly under one wrapping folder (like
          `cifar10.tar.gz`); a folder/archive of class folders without a split level is
          returned as one split named "all";
        - a `cifar-10-batches-py` (or `cifar-100-python`) folder;
        - `tfds` (CIFAR-10) or `tfds:NAME` for TensorFlow Datasets, which downloads.
      cache_dir: where decoded arrays are cached (default `$EDGEKT_CACHE_DIR` or
        `~/.cache/edgekt/data`).
      use_cache: read and write the cache.
      image_size: (height, width) every image must have (folder/archive sources; with
        `resize`, every source); None takes the first image's size.
      resize: resize images of another size instead of raising.
      tfds_data_dir: tfds data directory.

    Returns:
      `DataSplits`: a dict split name -> `Split(images, labels, class_names)`, with
      `.class_names` (sorted folder names for folder/archive sources).

    Raises:
      DataError: missing path, corrupted archive, empty class folder, non-image file,
        wrong image size, ...; the message names the file and the problem.
    """
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise DataError(f"--data={source!r}: not a path or 'tfds:NAME'; pass a folder, an archive or tfds:NAME")
    name = tfds_source.tfds_name(source)
    options = {"image_size": list(image_size) if image_size else None, "resize": bool(resize)}
    if name is not None:
        source_id = ["tfds", name, os.path.abspath(tfds_data_dir) if tfds_data_dir else None]
        reader = lambda: tfds_source.read_tfds(name, data_dir=tfds_data_dir)  # noqa: E731
    else:
        path = os.path.expanduser(source)
        if not os.path.exists(path):
            raise DataError(f"{source}: no such file or folder; pass an image-folder tree, an archive of one, a "
                            "cifar-10-batches-py folder, or 'tfds:NAME'")
        if os.path.isfile(path):
            if not image_tree.is_archive(path):
                raise DataError(f"{source}: not a supported archive; pass a folder or an archive ending in one of "
                                f"{', '.join(image_tree.ARCHIVE_SUFFIXES)}")
            reader = lambda: image_tree.read_splits(  # noqa: E731
                image_tree.iter_archive(path), source, image_size=image_size, resize=resize)
        elif cifar_batches.is_cifar_batches_dir(path):
            reader = lambda: cifar_batches.read_cifar_batches(path)  # noqa: E731
        else:
            reader = lambda: image_tree.read_splits(  # noqa: E731
                image_tree.iter_directory(path), source, image_size=image_size, resize=resize)
        source_id = cache.fingerprint(path)
    if image_size is not None and resize:
        read = reader
        reader = lambda: _fit_size(read(), tuple(image_size))  # noqa: E731

    if not use_cache:
        return reader()
    directory = cache_dir or cache.default_cache_dir()
    key = cache.cache_key(source_id, options)
    cached = cache.read(directory, key)
    if cached is not None:
        cached.source = source
        logging.info("data: %s from cache %s", source, cache.cache_path(directory, key))
        return cached
    start = time.perf_counter()
    splits = reader()
    logging.info("data: decoded %s in %.1fs (%s)", source, time.perf_counter() - start,
                 ", ".join(f"{k}={len(v.labels)}" for k, v in splits.items()))
    try:
        cache.write(directory, key, splits)
    except OSError as e:  # A read-only cache folder must not stop the job.
        logging.warning("could not write data cache in %s: %s", directory, e)
    return splits


def load_for(source: str | DataSplits, input_shape, resize: bool = False, **kwargs) -> DataSplits:
    """`load(source)` for a model taking images of `input_shape` (H, W, C): with `resize`,
    images of another size are resized to it; without, they are refused.

    Raises:
      DataError: as `load`, or images whose shape is not the model's (naming both and the
        --resize flag).
    """
    if any(d is None for d in input_shape):
        raise DataError(f"the model's input {tuple(input_shape)}: has no fixed image size; build the model with one, "
                        "e.g. keras.Input((32, 32, 3))")
    shape = tuple(int(d) for d in input_shape)
    if isinstance(source, DataSplits):
        splits = source
    else:  # without resize, the size is checked below (the same cache entry as a plain load)
        splits = load(source, image_size=shape[:2] if resize else None, resize=resize, **kwargs)
    if resize:
        splits = _fit_size(splits, shape[:2])
    for name, split in splits.items():
        got = tuple(split.images.shape[1:])
        if got != shape:
            advice = ("pass --resize to resize them" if got[-1] == shape[-1]
                      else "convert the images to the model's channels")
            raise DataError(f"{splits.source}: its {name} images are {'x'.join(map(str, got))} (HxWxC), the model "
                            f"takes {'x'.join(map(str, shape))}; {advice}")
    return splits


def _fit_size(splits: DataSplits, size: tuple[int, int]) -> DataSplits:
    """Resizes (bilinear, as the device app does) every split whose images are not `size`."""
    from tflite_runtime_app.data import check_images

    for name, split in list(splits.items()):
        if tuple(split.images.shape[1:3]) != size:
            images = check_images(split.images, splits.source, (*size, split.images.shape[-1]), True)
            splits[name] = make_split(images, split.labels, split.class_names)
    return splits
