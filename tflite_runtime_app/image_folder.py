"""Image-folder trees (`[split/]class/image`), read from a directory or an archive.

The one implementation of these loader rules, shared by the device app and `edgekt.data`
(so it imports numpy and Pillow only).
"""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
import zipfile
import zlib
from typing import Callable, Iterable, Iterator

import logging

import numpy as np

from tflite_runtime_app.errors import UserError

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "test", "val", "validation")
# The split a flat class-folder tree (no train/ or test/ level) is returned under.
FLAT_SPLIT = "all"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
_JUNK_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}


class DataError(UserError):
    """A data source is missing, malformed or inconsistent; the message names the file."""


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def _is_ignored(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p.lower() in _JUNK_NAMES for p in parts)


def iter_directory(root: str) -> Iterator[tuple[tuple[str, ...], bool, Callable[[], bytes]]]:
    """Yields (relative path parts, is_dir, reader) for every entry under `root`, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        base = () if rel == "." else tuple(rel.split(os.sep))
        for d in dirnames:
            yield base + (d,), True, None
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            yield base + (f,), False, (lambda full=full: _read_file(full))


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def iter_archive(path: str) -> Iterator[tuple[tuple[str, ...], bool, Callable[[], bytes]]]:
    """Yields (path parts, is_dir, reader) for the members of a tar or zip archive.

    Tar archives are read as one stream (a `.tar.gz` has no cheap random access), so
    each member's bytes are read while the stream is positioned on it.

    Raises:
      DataError: the archive is corrupted, truncated or not an archive.
    """
    try:
        if path.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    parts = tuple(p for p in info.filename.split("/") if p)
                    if info.is_dir():
                        yield parts, True, None
                    else:
                        data = zf.read(info)
                        yield parts, False, (lambda data=data: data)
            return
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                parts = tuple(p for p in posixpath.normpath(member.name).split("/") if p not in ("", "."))
                if not parts or ".." in parts:
                    continue
                if member.isdir():
                    yield parts, True, None
                elif member.isfile():
                    f = tf.extractfile(member)
                    data = f.read() if f is not None else b""
                    yield parts, False, (lambda data=data: data)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupted, truncated or unreadable archive ({type(e).__name__}: {e})") from e


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decodes an image file's bytes to a uint8 RGB array [H, W, 3].

    Raises:
      DataError: the bytes are not an image Pillow can read; the message names the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{name}: not a readable image file ({type(e).__name__}: {e})") from e


def _resolve_layout(dirs: set[tuple[str, ...]]) -> tuple[int, bool]:
    """Finds the tree's root folder and whether it has a split level.

    Descends through single wrapping folders (such as the `cifar10/` of the CIFAR-10
    archive) until a folder holds split folders or class folders. Returns (depth of the root,
    has_splits).
    """
    children: dict[tuple[str, ...], set[str]] = {}
    for d in dirs:
        children.setdefault(d[:-1], set()).add(d[-1])
    root: tuple[str, ...] = ()
    while True:
        kids = children.get(root, set())
        if any(k.lower() in SPLIT_NAMES for k in kids):
            return len(root), True
        if len(kids) == 1:
            only = root + (next(iter(kids)),)
            if children.get(only):
                root = only
                continue
        return len(root), False


def read_image_tree(entries: Iterable[tuple[tuple[str, ...], bool, Callable[[], bytes]]], source: str,
                    image_size: tuple[int, int] | None = None, resize: bool = False, skip_bad_files: bool = False,
                    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """Reads an image tree into arrays.

    Accepted layouts (after any single wrapping folder such as `cifar10/`):
    `split/class/image` with split in train, test, val, validation; or `class/image`, which
    is returned as one split named "all". Class names are the sorted union of the class
    folder names, so label i names the same class in every split.

    Args:
      entries: (path parts, is_dir, reader) tuples, e.g. from `iter_directory`.
      source: the directory or archive, used in messages.
      image_size: (height, width) every image must have; None takes the first image's size.
      resize: resize images of another size (bilinear) instead of raising.
      skip_bad_files: skip (with a warning) files that are not readable images instead of
        raising.

    Returns:
      ({split: (uint8 images [N, H, W, 3], int64 labels [N])}, class names).

    Raises:
      DataError: no images, an empty class folder, a non-image file, or an image of the
        wrong size; the message names the file.
    """
    dirs: set[tuple[str, ...]] = set()
    files: list[tuple[tuple[str, ...], Callable[[], bytes]]] = []
    for parts, is_dir, reader in entries:
        if _is_ignored(parts):
            continue
        if is_dir:
            dirs.add(parts)
        else:
            files.append((parts, reader))
            # Archives need not list directories; derive them from the file paths.
            for i in range(1, len(parts)):
                dirs.add(parts[:i])
    files.sort(key=lambda item: item[0])  # archive member order must not change labels or order
    strip, has_splits = _resolve_layout(dirs)
    depth = 3 if has_splits else 2

    def key_of(parts):
        rel = parts[strip:]
        if has_splits:
            return rel[0].lower(), rel[1]
        return FLAT_SPLIT, rel[0]

    class_dirs = set()
    for d in dirs:
        rel = d[strip:]
        if len(rel) == depth - 1 and (not has_splits or rel[0].lower() in SPLIT_NAMES):
            class_dirs.add(key_of(d))
    by_split: dict[str, dict[str, list]] = {}
    for parts, reader in files:
        rel = parts[strip:]
        name = os.path.join(source, *parts)
        if len(parts) <= strip:
            continue
        if len(rel) < depth:
            if len(rel) > 1:
                logger.warning("%s: not inside a class folder; skipped", name)
            continue
        if has_splits and rel[0].lower() not in SPLIT_NAMES:
            logger.warning("%s: not inside a split folder %s; skipped", name, SPLIT_NAMES)
            continue
        if len(rel) > depth:
            raise DataError(f"{name}: nested too deep; expected "
                            f"{'split/class/image' if has_splits else 'class/image'} under {source}")
        split, cls = key_of(parts)
        by_split.setdefault(split, {}).setdefault(cls, []).append((name, reader))
    for split, cls in sorted(class_dirs):
        if cls not in by_split.get(split, {}):
            raise DataError(f"{os.path.join(source, *([split] if has_splits else []), cls)}: "
                            "class folder is empty (no image files)")
    if not by_split:
        raise DataError(f"{source}: no images found; expected class folders of images, "
                        "optionally under train/ and test/")
    class_names = tuple(sorted({c for classes in by_split.values() for c in classes}))
    for split, classes in by_split.items():
        missing = sorted(set(class_names) - set(classes))
        if missing:
            logger.warning("%s: split %r has no folder for classes %s", source, split, missing)

    decode = _Decoder(image_size, resize, skip_bad_files)
    out = {}
    for split in sorted(by_split):
        images, labels = [], []
        for label, cls in enumerate(class_names):
            for name, reader in by_split[split].get(cls, []):
                img = decode(reader, name)
                if img is not None:
                    images.append(img)
                    labels.append(label)
        if not images:
            raise DataError(f"{source}: split {split!r} has no readable images")
        out[split] = (np.stack(images), np.asarray(labels, np.int64))
        logger.info("%s: %s split, %d images of %d classes", source, split, len(labels), len(class_names))
    return out, class_names


def read_path(path: str, image_size: tuple[int, int] | None = None, resize: bool = False,
              skip_bad_files: bool = False) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """Reads an image-folder tree from a directory or an archive (see `read_image_tree`).

    Raises:
      DataError: missing path, unsupported file type, or any `read_image_tree` problem.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    if os.path.isfile(path):
        if not is_archive(path):
            raise DataError(f"{path}: not a supported archive; expected one of {', '.join(ARCHIVE_SUFFIXES)}")
        entries = iter_archive(path)
    else:
        entries = iter_directory(path)
    return read_image_tree(entries, path, image_size=image_size, resize=resize, skip_bad_files=skip_bad_files)


class _Decoder:
    """Decodes files one by one and holds every image to one size (the first image's, unless
    given): other sizes are resized or refused, unreadable files skipped or refused."""

    def __init__(self, image_size, resize: bool, skip_bad_files: bool):
        self.expected = tuple(image_size) if image_size is not None else None
        self.first: str | None = None
        self.resize, self.skip = resize, skip_bad_files

    def __call__(self, reader: Callable[[], bytes], name: str) -> np.ndarray | None:
        try:
            img = decode_image(reader(), name)
        except DataError as e:
            if not self.skip:
                raise
            logger.warning("skipped %s", e)
            return None
        if self.expected is None:
            self.expected, self.first = img.shape[:2], name
        if img.shape[:2] != self.expected:
            if not self.resize:
                ref = f" (the size of {self.first})" if self.first else ""
                raise DataError(f"{name}: image is {img.shape[0]}x{img.shape[1]} (HxW), expected "
                                f"{self.expected[0]}x{self.expected[1]}{ref}; pass resize=True to resize")
            img = _resize(img, self.expected)
        return img


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR), dtype=np.uint8)


def read_images(path: str, image_size: tuple[int, int] | None = None, resize: bool = False,
                skip_bad_files: bool = False) -> tuple[np.ndarray, list[str]]:
    """Reads every image file under a folder or archive, in sorted path order, ignoring any
    class structure (for unlabelled images). Returns (uint8 images, file names).

    Raises:
      DataError: missing path, no images, a non-image file (unless skipped), or a wrong size.
    """
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    entries = iter_archive(path) if os.path.isfile(path) else iter_directory(path)
    files = sorted(((parts, reader) for parts, is_dir, reader in entries if not is_dir and not _is_ignored(parts)),
                   key=lambda item: item[0])
    decode = _Decoder(image_size, resize, skip_bad_files)
    images, names = [], []
    for parts, reader in files:
        img = decode(reader, os.path.join(path, *parts))
        if img is not None:
            images.append(img)
            names.append("/".join(parts))
    if not images:
        raise DataError(f"{path}: no images found")
    return np.stack(images), names
