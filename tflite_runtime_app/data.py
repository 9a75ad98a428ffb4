"""The device app's inputs: labelled images (class folders or .npz), unlabelled images, and
soft labels from the cloud, checked against the model before any training starts."""

from __future__ import annotations

import os

import numpy as np

from tflite_runtime_app import image_folder
from tflite_runtime_app.image_folder import DataError


def check_images(images: np.ndarray, source: str, shape: tuple[int, ...], resize: bool) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != shape[-1]:
        raise DataError(f"{source}: images must be [N, H, W, {shape[-1]}]. Received: shape={images.shape}")
    if images.dtype.kind == "f":
        bad = ~np.isfinite(images)
        if bad.any():
            first = int(np.argwhere(bad.reshape(len(images), -1).any(axis=1))[0][0])
            raise DataError(f"{source}: {int(bad.reshape(len(images), -1).any(axis=1).sum())} images contain NaN or "
                            f"inf (first: index {first})")
        if images.min() < 0 or images.max() > 255:
            raise DataError(f"{source}: pixel values must be in [0, 255]. Received: min={images.min():.3g}, "
                            f"max={images.max():.3g}")
    elif images.dtype != np.uint8:
        raise DataError(f"{source}: images must be uint8 or float. Received: dtype={images.dtype}")
    if tuple(images.shape[1:3]) != tuple(shape[:2]):
        if not resize:
            raise DataError(f"{source}: images are {images.shape[1]}x{images.shape[2]}, the model takes "
                            f"{shape[0]}x{shape[1]}; pass --resize to resize them")
        from PIL import Image

        images = np.stack([np.asarray(Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).resize(
            (shape[1], shape[0]), Image.BILINEAR)) for im in images])
    return images


def _npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from e


def load_labelled(path: str, class_names: list[str], input_shape: tuple[int, ...], *, split: str | None = None,
                  resize: bool = False, skip_bad_files: bool = False, skip_unknown_classes: bool = False,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Labelled images for the model's classes.

    Args:
      path: a folder/archive of class folders (optionally under train/test), or an .npz with
        `images` [N, H, W, C] and `labels` [N] (ints indexing the model's classes, or
        strings naming them).
      class_names: the model's classes; folder names are matched to them by name.
      input_shape: (H, W, C) the model takes.
      split: which split of a tree with several (default: "test" if present, else the only one).
      resize: resize images of another size instead of refusing them.
      skip_bad_files: skip unreadable files with a warning instead of refusing.
      skip_unknown_classes: drop class folders the model does not know instead of refusing.

    Returns:
      (images, labels as indices into `class_names`).

    Raises:
      DataError: missing/empty/corrupt input, unknown class, bad values or shapes.
    """
    if path.endswith(".npz") and os.path.isfile(path):
        z = _npz(path)
        if "images" not in z or "labels" not in z:
            raise DataError(f"{path}: needs arrays 'images' and 'labels'; has {sorted(z)}")
        images = check_images(z["images"], path, input_shape, resize)
        raw = z["labels"]
        if raw.shape != (len(images),):
            raise DataError(f"{path}: {len(images)} images but labels of shape {raw.shape}")
        if raw.dtype.kind in "US":
            unknown = sorted(set(raw.astype(str)) - set(class_names))
            if unknown:
                raise DataError(f"{path}: labels {unknown} are not among the model's classes {class_names}")
            labels = np.array([class_names.index(v) for v in raw.astype(str)], np.int64)
        else:
            labels = raw.astype(np.int64)
            bad = labels[(labels < 0) | (labels >= len(class_names))]
            if bad.size:
                raise DataError(f"{path}: label {int(bad[0])} is outside the model's {len(class_names)} classes")
        if len(images) == 0:
            raise DataError(f"{path}: no images")
        return images, labels
    splits, folder_classes = image_folder.read_path(path, resize=False, skip_bad_files=skip_bad_files)
    if split is None:
        split = "test" if "test" in splits else (next(iter(splits)) if len(splits) == 1 else None)
        if split is None:
            raise DataError(f"{path}: has splits {sorted(splits)}; choose one with --split")
    if split not in splits:
        raise DataError(f"{path}: no split {split!r}; has {sorted(splits)}")
    images, folder_labels = splits[split]
    images = check_images(images, path, input_shape, resize)
    mapping = np.full(len(folder_classes), -1, np.int64)
    unknown = []
    for i, name in enumerate(folder_classes):
        if name in class_names:
            mapping[i] = class_names.index(name)
        else:
            unknown.append(name)
    if unknown and not skip_unknown_classes:
        raise DataError(f"{path}: class folders {unknown} are not among the model's classes {class_names} "
                        "(use --skip_unknown_classes to ignore them)")
    labels = mapping[folder_labels]
    keep = labels >= 0
    if not keep.any():
        raise DataError(f"{path}: no images of the model's classes")
    return images[keep], labels[keep]


def load_unlabelled(path: str, input_shape: tuple[int, ...], *, resize: bool = False,
                    skip_bad_files: bool = False) -> np.ndarray:
    """Images without labels: any image files under a folder/archive, or `images` of an .npz."""
    if path.endswith(".npz") and os.path.isfile(path):
        z = _npz(path)
        if "images" not in z:
            raise DataError(f"{path}: needs an array 'images'; has {sorted(z)}")
        return check_images(z["images"], path, input_shape, resize)
    images, _ = image_folder.read_images(path, resize=False, skip_bad_files=skip_bad_files)
    return check_images(images, path, input_shape, resize)


def load_soft_labels(path: str, class_names: list[str], input_shape: tuple[int, ...], *,
                     resize: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Images and the cloud model's soft labels, mapped onto the device model's classes by name.

    The .npz (from `pipelines.soft_labels`) holds `images`, `soft_targets` [N, K_cloud],
    `temperature` and `class_names`. Cloud classes the device does not have are dropped and
    each row renormalised.

    Returns:
      (images, targets [N, len(class_names)], temperature).
    """
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (soft labels come from pipelines.soft_labels)")
    z = _npz(path)
    for key in ("images", "soft_targets", "temperature", "class_names"):
        if key not in z:
            raise DataError(f"{path}: needs array {key!r}; has {sorted(z)}")
    images = check_images(z["images"], path, input_shape, resize)
    soft = np.asarray(z["soft_targets"], np.float64)
    if soft.shape[0] != len(images):
        raise DataError(f"{path}: {len(images)} images but {soft.shape[0]} rows of soft labels")
    if not np.isfinite(soft).all() or (soft < 0).any():
        raise DataError(f"{path}: soft labels must be finite probabilities")
    cloud = [str(c) for c in z["class_names"]]
    if soft.shape[1] != len(cloud):
        raise DataError(f"{path}: soft labels have {soft.shape[1]} columns for {len(cloud)} class names")
    shared = [c for c in class_names if c in cloud]
    if not shared:
        raise DataError(f"{path}: none of the cloud classes {cloud} is a device class {class_names}")
    targets = np.zeros((len(images), len(class_names)), np.float64)
    for j, name in enumerate(class_names):
        if name in cloud:
            targets[:, j] = soft[:, cloud.index(name)]
    sums = targets.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise DataError(f"{path}: {int((sums <= 0).sum())} images put no probability on any device class")
    temperature = float(z["temperature"])
    if not temperature > 0:
        raise DataError(f"{path}: temperature must be > 0. Received: {temperature}")
    return images, (targets / sums).astype(np.float32), temperature
