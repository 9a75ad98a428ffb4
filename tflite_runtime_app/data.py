"""The device app's inputs: labelled images (class folders or .npz), unlabelled images, and
soft labels from the cloud, checked against the model before any training starts.

Pixels are raw RGB values in 0..255: uint8, any integer type within 0..255, or floats within
0..255. Float images whose values all lie within 0..1 are refused, whether all images or any
one of them (they were almost certainly scaled already; the model scales inside).

Labels in an .npz are class indices or class names. Indices may be stored as integers or as
floats with whole values (3.0); a fractional, NaN or infinite label is refused, and so are
booleans. Class names may be str or bytes (UTF-8).
"""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from tflite_runtime_app import image_folder, npz
from tflite_runtime_app.checkpoint import WEIGHT_PREFIX, describe_load_error, is_pickle_error
from tflite_runtime_app.errors import from_os_error
from tflite_runtime_app.image_folder import DataError

RESIZE_ADVICE = "pass --resize to resize them"
# Soft-label temperatures: outside this range the softmax overflows or flattens to uniform
# (float32 on the device). The file check, the app's flag and the soft-label server use it.
TEMPERATURE_RANGE = (1e-3, 1e3)
# How far a soft-label row may sum from 1 (float16 probabilities sum within ~1e-3).
SOFT_SUM_TOLERANCE = 1e-2


def check_images(images: np.ndarray, source: str, shape: tuple[int, ...], resize: bool, *,
                 resize_advice: str = RESIZE_ADVICE) -> np.ndarray:
    """Checks raw-pixel images [N, H, W, C] against the model's input `shape` (H, W, C).

    Returns:
      The images (uint8, or float within 0..255), resized to the model's input when `resize`.

    Raises:
      DataError: no images, wrong rank, channels or dtype, NaN/inf, pixels outside 0..255 or
        all within 0..1, or another size without `resize`; the message names `source`.
    """
    images = np.asarray(images)
    channels = shape[-1]
    if images.ndim == 3 and channels == 3 and images.shape[-1] != 3:
        raise DataError(f"{source}: images have shape {images.shape}, which looks like grayscale [N, H, W]; the model "
                        f"takes RGB [N, H, W, 3] (repeat the gray channel 3 times)")
    if images.ndim == 3 and images.shape[-1] == channels:
        raise DataError(f"{source}: images must be [N, H, W, {channels}]. Received: shape={images.shape}, one image; "
                        "add a leading axis (images[None])")
    if images.ndim != 4 or images.shape[-1] != channels:
        raise DataError(f"{source}: images must be [N, H, W, {channels}]. Received: shape={images.shape}; save them "
                        f"as an array of that shape")
    if len(images) == 0:
        raise DataError(f"{source}: no images (shape {images.shape}); add some images")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise DataError(f"{source}: images have no pixels (shape {images.shape}); save images of "
                        f"{shape[0]}x{shape[1]} (HxW)")
    kind = images.dtype.kind
    if kind == "f":
        finite = np.isfinite(images.reshape(len(images), -1)).all(axis=1)
        if not finite.all():
            first = int(np.flatnonzero(~finite)[0])
            raise DataError(f"{source}: {int((~finite).sum())} images contain NaN or inf (first: index {first}); "
                            "fix or remove those images")
        low, high = float(images.min()), float(images.max())
        if low < 0 or high > 255:
            raise DataError(f"{source}: pixel values must be in [0, 255]. Received: min={low:.6g}, max={high:.6g}; "
                            "save raw 0-255 pixels")
        if 0 < high <= 1:
            raise DataError(f"{source}: pixel values are all within [0, 1] (max {high:.6g}), so they look scaled; "
                            "multiply them by 255 (the model takes raw 0-255 pixels)")
        # One image scaled among raw ones is as wrong: judged image by image (a black image, all 0, is fine).
        peak = images.reshape(len(images), -1).max(axis=1)
        scaled = (peak > 0) & (peak <= 1)
        if scaled.any():
            first = int(np.flatnonzero(scaled)[0])
            raise DataError(f"{source}: {int(scaled.sum())} of {len(images)} images have every pixel within [0, 1] "
                            f"(first: index {first}, max {float(peak[first]):.6g}), so they look scaled; multiply "
                            "them by 255 (the model takes raw 0-255 pixels)")
    elif kind in "iu":
        if images.dtype != np.uint8:
            low, high = int(images.min()), int(images.max())
            if low < 0 or high > 255:
                raise DataError(f"{source}: pixel values must be in [0, 255]. Received: {images.dtype} from {low} to "
                                f"{high}; save 8-bit pixels (uint8)")
            images = images.astype(np.uint8)
    else:
        raise DataError(f"{source}: images must be uint8 (or numbers in 0..255). Received: dtype={images.dtype}; "
                        "save them as uint8")
    if tuple(images.shape[1:3]) != tuple(shape[:2]):
        if not resize:
            raise DataError(f"{source}: images are {images.shape[1]}x{images.shape[2]} (HxW), the model takes "
                            f"{shape[0]}x{shape[1]}; {resize_advice}")
        from PIL import Image

        pixels = np.rint(images) if kind == "f" else images
        images = np.stack([np.asarray(Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).resize(
            (shape[1], shape[0]), Image.BILINEAR)) for im in pixels])
    return images


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file (never pickled objects).

    Raises:
      DataError: missing, unreadable, not an .npz, or holding pickled objects.
    """
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, not an .npz file; pass the file (or a folder without the .npz name)")
    npz.require_regular_file(path, ".npz file")
    try:
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # the pickle protocol's first byte
    except OSError:
        pickled = False
    if pickled:
        raise DataError(f"{path}: holds pickled Python objects, which are never loaded (they can run code); save "
                        "plain numeric or string arrays with np.savez")
    if zipfile.is_zipfile(path):
        npz.check(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: holds a single array (np.save), not named arrays; save it with np.savez")
        with z:
            return {k: z[k] for k in z.files}
    except OSError as e:
        error = from_os_error(e, path=path)
        if error is not None:
            raise DataError(str(error)) from e
        raise DataError(f"{path}: not a readable .npz file ({' '.join(str(e).split())}); save it with np.savez") from e
    except ValueError as e:
        if is_pickle_error(e, path):
            raise DataError(f"{path}: holds pickled Python objects, which are never loaded (they can run code); save "
                            "plain numeric or string arrays with np.savez") from e
        raise DataError(f"{path}: not a readable .npz file ({describe_load_error(e)}); save it with np.savez") from e
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {' '.join(str(e).split())}); check "
                        "the file or save it again with np.savez") from e


def _require(z: dict, path: str, *keys: str) -> None:
    missing = [k for k in keys if k not in z]
    if not missing:
        return
    if any(k.startswith(WEIGHT_PREFIX) for k in z):
        raise DataError(f"{path}: is a checkpoint of `learn` (weights), not data; pass it as --checkpoint and the "
                        f"images as --data")
    names = sorted(z)
    shown = ", ".join(repr(k) for k in names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    raise DataError(f"{path}: needs arrays {missing}; has {shown or 'none'} (save them with np.savez)")


def _names(values: np.ndarray, path: str, what: str) -> list[str]:
    """Strings of a str or bytes (UTF-8) array."""
    if values.dtype.kind == "U":
        return [str(v) for v in values.ravel()]
    try:
        return [bytes(v).decode("utf-8") for v in values.ravel()]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: {what} are bytes that are not UTF-8 text ({e}); save them as str") from e


def labels_to_indices(raw: np.ndarray, class_names: list[str], path: str, n: int) -> np.ndarray:
    """Class indices (int64) of `raw` labels: integers, whole floats, or class names.

    Raises:
      DataError: wrong shape or type, a fractional/NaN label, an index out of range or an
        unknown class name; the message names `path` and the first bad label.
    """
    raw = np.asarray(raw)
    k = len(class_names)
    if raw.ndim == 2 and raw.shape == (n, k) and raw.dtype.kind in "fiub":
        raise DataError(f"{path}: labels have shape {raw.shape}, which looks one-hot; save class indices of shape "
                        f"({n},) (labels.argmax(axis=1))")
    if raw.shape != (n,):
        raise DataError(f"{path}: {n} images but labels of shape {raw.shape}; save one label per image, shape ({n},)")
    kind = raw.dtype.kind
    if kind in "US":
        names = _names(raw, path, "labels")
        unknown = sorted(set(names) - set(class_names))
        if unknown:
            raise DataError(f"{path}: labels {unknown[:5]}{'...' if len(unknown) > 5 else ''} are not among the "
                            f"model's classes {class_names}; use the model's class names")
        index = {c: i for i, c in enumerate(class_names)}
        return np.array([index[v] for v in names], np.int64)
    if kind == "f":
        bad = ~np.isfinite(raw) | (raw != np.round(raw))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: label {raw[i].item()} (index {i}) is not a whole number; labels must be class "
                            f"indices 0..{k - 1} or class names")
    elif kind not in "iu":
        raise DataError(f"{path}: labels must be class indices (integers) or class names. Received: dtype="
                        f"{raw.dtype}; save integer labels 0..{k - 1}")
    out_of_range = (raw < 0) | (raw >= k)
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range)[0])
        value = raw[i].item()
        value = int(value) if kind == "f" else value
        raise DataError(f"{path}: label {value} (index {i}) is outside the model's {k} classes; labels must be "
                        f"0..{k - 1}")
    return raw.astype(np.int64)


def load_labelled(path: str, class_names: list[str], input_shape: tuple[int, ...], *, split: str | None = None,
                  resize: bool = False, skip_bad_files: bool = False, skip_unknown_classes: bool = False,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Labelled images for the model's classes.

    Args:
      path: a folder/archive of class folders (optionally under train/test), or an .npz with
        `images` [N, H, W, C] and `labels` [N] (see the module docstring).
      class_names: the model's classes; folder names are matched to them by name.
      input_shape: (H, W, C) the model takes.
      split: which split of a tree with several (default: "test" if present, else the only one).
      resize: resize images of another size to the model's input instead of refusing them.
      skip_bad_files: skip unreadable files with a warning instead of refusing.
      skip_unknown_classes: drop class folders the model does not know instead of refusing.

    Returns:
      (images, labels as indices into `class_names`).

    Raises:
      DataError: missing/empty/corrupt input, unknown class, bad values or shapes.
    """
    if path.lower().endswith(".npz") and os.path.exists(path):
        z = read_npz(path)
        _require(z, path, "images", "labels")
        images = check_images(z["images"], path, input_shape, resize)
        return images, labels_to_indices(z["labels"], list(class_names), path, len(images))
    splits, folder_classes = image_folder.read_path(path, image_size=input_shape[:2], resize=resize,
                                                    skip_bad_files=skip_bad_files, resize_advice=RESIZE_ADVICE)
    if split is None:
        split = "test" if "test" in splits else (next(iter(splits)) if len(splits) == 1 else None)
        if split is None:
            raise DataError(f"{path}: has splits {sorted(splits)}; choose one with --split")
    if split.lower() not in splits:
        raise DataError(f"{path}: no split {split!r}; pass one of {sorted(splits)} to --split")
    images, folder_labels = splits[split.lower()]
    images = check_images(images, path, input_shape, resize)
    mapping = np.full(len(folder_classes), -1, np.int64)
    unknown = []
    for i, name in enumerate(folder_classes):
        if name in class_names:
            mapping[i] = class_names.index(name)
        else:
            unknown.append(name)
    if unknown and not skip_unknown_classes:
        raise DataError(f"{path}: class folders {unknown} are not among the model's classes {class_names}; pass "
                        "--skip_unknown_classes to ignore them, or rename them to the model's classes")
    labels = mapping[folder_labels]
    keep = labels >= 0
    if not keep.any():
        raise DataError(f"{path}: no images of the model's classes {class_names}; name the class folders after them")
    return images[keep], labels[keep]


def load_unlabelled(path: str, input_shape: tuple[int, ...], *, resize: bool = False,
                    skip_bad_files: bool = False, offer_skip: bool = True) -> np.ndarray:
    """Images without labels: any image files under a folder/archive, or `images` of an .npz
    (`offer_skip`: whether an error may advise --skip_bad_files)."""
    if path.lower().endswith(".npz") and os.path.exists(path):
        z = read_npz(path)
        _require(z, path, "images")
        return check_images(z["images"], path, input_shape, resize)
    images, _ = image_folder.read_images(path, image_size=input_shape[:2], resize=resize,
                                         skip_bad_files=skip_bad_files, resize_advice=RESIZE_ADVICE,
                                         offer_skip=offer_skip)
    return check_images(images, path, input_shape, resize)


def load_soft_labels(path: str, class_names: list[str], input_shape: tuple[int, ...], *,
                     resize: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """Images and the cloud model's soft labels, mapped onto the device model's classes by name.

    The .npz (from `pipelines.soft_labels`) holds `images`, `soft_targets` [N, K_cloud]
    (probabilities: rows of non-negative values summing to 1), `temperature` (a number > 0)
    and `class_names` [K_cloud] (unique strings). Cloud classes the device does not have are
    dropped and each row renormalised.

    Returns:
      (images, targets [N, len(class_names)], temperature).

    Raises:
      DataError: any of the above does not hold; the message names the file and what is wrong.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file; write the soft labels with pipelines.soft_labels")
    z = read_npz(path)
    _require(z, path, "images", "soft_targets", "temperature", "class_names")
    images = check_images(z["images"], path, input_shape, resize)
    raw_names = np.asarray(z["class_names"])
    if raw_names.ndim != 1 or raw_names.dtype.kind not in "US":
        raise DataError(f"{path}: class_names must be a list of strings. Received: dtype={raw_names.dtype}, shape="
                        f"{raw_names.shape}; save the cloud model's class names as strings")
    cloud = _names(raw_names, path, "class_names")
    duplicated = sorted({c for c in cloud if cloud.count(c) > 1})
    if duplicated:
        raise DataError(f"{path}: class_names lists {duplicated} more than once; save each class name once")
    soft = np.asarray(z["soft_targets"])
    if soft.dtype.kind not in "fiu":
        raise DataError(f"{path}: soft_targets must be numbers. Received: dtype={soft.dtype}; save float "
                        "probabilities")
    if soft.ndim != 2 or soft.shape != (len(images), len(cloud)):
        raise DataError(f"{path}: soft_targets must be [{len(images)} images, {len(cloud)} class names]. Received: "
                        f"shape={soft.shape}; save one row of probabilities per image")
    soft = soft.astype(np.float64)
    rows_bad = ~np.isfinite(soft).all(axis=1)
    if rows_bad.any():
        i = int(np.flatnonzero(rows_bad)[0])
        raise DataError(f"{path}: soft_targets row {i} holds NaN or inf ({int(rows_bad.sum())} rows do); write the "
                        "soft labels again")
    negative = (soft < 0).any(axis=1)
    if negative.any():
        i = int(np.flatnonzero(negative)[0])
        raise DataError(f"{path}: soft_targets row {i} holds a negative value ({soft[i].min():.3g}); soft labels must "
                        "be probabilities (a softmax), not logits")
    sums = soft.sum(axis=1)
    off = np.abs(sums - 1) > SOFT_SUM_TOLERANCE
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise DataError(f"{path}: soft_targets row {i} sums to {sums[i]:.4g}, not 1 ({int(off.sum())} rows do); soft "
                        "labels must be probabilities (a softmax over the cloud classes)")
    temperature = np.asarray(z["temperature"])
    if temperature.size != 1 or temperature.dtype.kind not in "fiu":
        raise DataError(f"{path}: temperature must be one number. Received: dtype={temperature.dtype}, shape="
                        f"{temperature.shape}; write the soft labels again")
    temperature = float(temperature.reshape(()))
    low, high = TEMPERATURE_RANGE
    if not (np.isfinite(temperature) and low <= temperature <= high):
        raise DataError(f"{path}: temperature {temperature} is not in [{low:g}, {high:g}]; write the soft labels again "
                        "with a temperature such as 4")
    shared = [c for c in class_names if c in cloud]
    if not shared:
        raise DataError(f"{path}: none of the cloud classes {cloud[:10]} is a device class {class_names}; use soft "
                        "labels from a cloud model that shares classes with the device model")
    targets = np.zeros((len(images), len(class_names)), np.float64)
    for j, name in enumerate(class_names):
        if name in cloud:
            targets[:, j] = soft[:, cloud.index(name)]
    kept = targets.sum(axis=1, keepdims=True)
    if (kept <= 0).any():
        i = int(np.flatnonzero(kept[:, 0] <= 0)[0])
        raise DataError(f"{path}: {int((kept <= 0).sum())} images (first: index {i}) put no probability on any device "
                        "class; remove them or use a device model with their classes")
    return images, (targets / kept).astype(np.float32), temperature
