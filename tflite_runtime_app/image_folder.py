"""Image-folder trees (`[split/]class/image`), read from a directory or an archive.

The one implementation of these loader rules, shared by the device app and `edgekt.data`
(so it imports numpy and Pillow only).

Every image becomes 8-bit RGB (`decode_image`):
  - RGB, grayscale (L), 1-bit, palette (P), CMYK, YCbCr, HSV and LAB images are converted to
    RGB as Pillow converts them;
  - 16-bit images keep their high byte (v >> 8, so an 8-bit value v stored as v * 257 comes
    back as v): 16-bit grayscale (modes I;16*, or mode I read from 16-bit samples) directly,
    16-bit RGB(A) as Pillow reads it; 32-bit integer grayscale (mode I from 32-bit samples,
    e.g. a TIFF) is taken as 8-bit when its values lie within 0..255, as 16-bit when they lie
    within 0..65535, and refused beyond;
  - transparency (an alpha channel, or a transparent palette entry or colour) is composited
    on black: each channel becomes round(value * alpha / 255), so opaque pixels are unchanged;
  - floating-point images (mode F) and modes Pillow cannot convert are refused, as are
    images of more than `MAX_PIXELS` pixels (checked before they are decoded);
  - an EXIF orientation is applied; a multi-frame file (GIF, TIFF) gives its first frame.
Archive members with `..` in their path, or larger than `MAX_MEMBER_BYTES`, are refused, and so
is an archive whose members unpack to more than `unpack_budget()` bytes before decoding (a
quarter of the machine's memory: a tar stream's members are held until they are decoded; a
zip member is read only when it is decoded).
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import re
import stat
import tarfile
import warnings
import zipfile
import zlib
from typing import Callable, Iterable, Iterator

import numpy as np

from tflite_runtime_app.errors import UserError, from_os_error

try:  # some minimal Python builds lack lzma
    from lzma import LZMAError
except ImportError:  # pragma: no cover
    class LZMAError(Exception):
        pass

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "test", "val", "validation")
# The split a flat class-folder tree (no train/ or test/ level) is returned under.
FLAT_SPLIT = "all"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
_JUNK_NAMES = {"thumbs.db", "desktop.ini", "__macosx"}
# The largest archive member read (an image file beyond it is refused, not decompressed: a
# zip bomb of zeros would otherwise fill the memory).
MAX_MEMBER_BYTES = 256 << 20


def unpack_budget() -> int:
    """The most bytes of archive members or `.npz` arrays held in memory at once: a quarter
    of this machine's physical memory (between 256 MiB and 16 GiB; 4 GiB where it is unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 4 << 30
    return max(256 << 20, min(16 << 30, total // 4))


# The most pixels an image may have: 24 Mpx (6000x4000) decode to 72 MB of RGB; larger files
# are refused before decoding, so that a small, highly compressed file cannot fill a board's memory.
MAX_PIXELS = 24_000_000

# What the size error advises by default (the device app names its flag instead).
RESIZE_ADVICE = "pass --resize to resize them"


class DataError(UserError):
    """A data source is missing, malformed or inconsistent; the message names the file."""


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def _is_ignored(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p.lower() in _JUNK_NAMES for p in parts)


def iter_directory(root: str) -> Iterator[tuple[tuple[str, ...], bool, Callable[[], bytes]]]:
    """Yields (relative path parts, is_dir, reader) for every entry under `root`, sorted.
    Links to folders are followed (a data set is often a tree of links); a link that leads
    back into a folder already read is refused.

    Raises:
      OSError: a folder cannot be listed (e.g. no permission); it is not skipped silently.
      DataError: a folder loop made of links.
    """
    def refuse(error: OSError):
        raise error

    seen = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, onerror=refuse, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        base = () if rel == "." else tuple(rel.split(os.sep))
        for d in dirnames:
            real = os.path.realpath(os.path.join(dirpath, d))
            if real in seen:
                raise DataError(f"{os.path.join(dirpath, d)}: links to {real}, a folder already read (a loop or a "
                                "second copy); remove the link")
            seen.add(real)
        for d in dirnames:
            yield base + (d,), True, None
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            yield base + (f,), False, (lambda full=full: read_image_file(full))


def read_image_file(path: str, todo: str = "remove it from the folder, or pass --skip_bad_files") -> bytes:
    """A file's bytes; a pipe or device (which could block or never end) or a file larger than
    any image is refused by name before it is read (`todo`: what the message advises)."""
    mode_size = os.stat(path)
    if not stat.S_ISREG(mode_size.st_mode):
        raise DataError(f"{path}: not a regular file (a pipe, device or socket); {todo}")
    if mode_size.st_size > MAX_MEMBER_BYTES:
        raise DataError(f"{path}: {mode_size.st_size} bytes, more than the {MAX_MEMBER_BYTES} an image file may have; "
                        f"{todo}")
    with open(path, "rb") as f:
        return f.read()


def iter_archive(path: str) -> Iterator[tuple[tuple[str, ...], bool, Callable[[], bytes]]]:
    """Yields (path parts, is_dir, reader) for the members of a tar or zip archive.

    Tar archives are read as one stream (a `.tar.gz` has no cheap random access), so
    each member's bytes are read while the stream is positioned on it. Links and special
    files are skipped with a warning.

    Raises:
      DataError: the archive is corrupted, truncated or not an archive, a member's path leaves
        the archive (`..`), or a member is larger than `MAX_MEMBER_BYTES`.
    """
    def member_parts(name: str) -> tuple[str, ...]:
        parts = tuple(p for p in posixpath.normpath(name.replace("\\", "/")).split("/") if p not in ("", "."))
        if ".." in name.replace("\\", "/").split("/"):
            raise DataError(f"{path}: member {name!r} has a path that leads outside the archive (..); rebuild the "
                            "archive with paths relative to its top folder")
        return parts

    def check_size(name: str, size: int) -> None:
        if size > MAX_MEMBER_BYTES:
            raise DataError(f"{path}: member {name!r} unpacks to {size} bytes, more than the {MAX_MEMBER_BYTES} "
                            "an image file may have (a zip bomb?); remove it from the archive")

    budget, held = unpack_budget(), 0

    def hold(name: str, size: int) -> None:
        nonlocal held
        held += size
        if held > budget:
            raise DataError(f"{path}: its members unpack to more than {budget} bytes (at {name!r}), more than this "
                            "machine can hold before decoding them (a zip bomb?); unpack the archive to a folder and "
                            "pass the folder, or split the archive")

    try:
        if path.lower().endswith(".zip"):
            zf = zipfile.ZipFile(path)  # stays open for the readers; closed when they are gone

            def read_member(info: zipfile.ZipInfo) -> bytes:
                try:
                    return zf.read(info)
                except (RuntimeError, NotImplementedError) as e:  # encrypted, unknown compression
                    raise DataError(f"{path}: member {info.filename!r} cannot be unpacked ({e}); rebuild the "
                                    "archive without encryption, with deflate or no compression") from e
                except (zipfile.BadZipFile, EOFError, zlib.error, LZMAError) as e:
                    raise DataError(f"{path}: member {info.filename!r} is corrupted ({type(e).__name__}: "
                                    f"{' '.join(str(e).split())}); check the file (download or copy it again)") from e

            for info in zf.infolist():
                parts = member_parts(info.filename)
                if not parts:
                    continue
                if info.is_dir():
                    yield parts, True, None
                else:
                    check_size(info.filename, info.file_size)
                    yield parts, False, (lambda info=info: read_member(info))
            return
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                parts = member_parts(member.name)
                if not parts:
                    continue
                if member.isdir():
                    yield parts, True, None
                elif member.isfile():
                    check_size(member.name, member.size)
                    if not _is_ignored(parts):
                        hold(member.name, member.size)
                    f = tf.extractfile(member)
                    data = f.read() if f is not None else b""
                    yield parts, False, (lambda data=data: data)
                else:
                    logger.warning("%s: member %r is a link or a special file; skipped", path, member.name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, LZMAError) as e:
        raise DataError(f"{path}: corrupted, truncated or unreadable archive ({type(e).__name__}: "
                        f"{' '.join(str(e).split())}); check the file (download or copy it again)") from e
    except OSError as e:
        error = from_os_error(e, path=path)
        if error is not None:
            raise DataError(str(error)) from e
        raise DataError(f"{path}: corrupted, truncated or unreadable archive ({type(e).__name__}: "
                        f"{' '.join(str(e).split())}); check the file (download or copy it again)") from e


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decodes an image file's bytes to a uint8 RGB array [H, W, 3] (the rules are in the
    module docstring).

    Raises:
      DataError: the bytes are not an image Pillow can read, the image is too large, or its
        pixels have no defined 8-bit meaning; the message names the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            if im.width * im.height > MAX_PIXELS:
                raise DataError(f"{name}: too large: {im.height}x{im.width} (HxW) pixels, more than the "
                                f"{MAX_PIXELS:,} an image may have; make the image smaller (e.g. to the model's "
                                "input size) first")
            rawmodes = {t[3][0] if isinstance(t[3], tuple) else t[3] for t in (im.tile or []) if len(t) > 3 and t[3]}
            im.load()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{name}: too large to decode ({' '.join(str(e).split())}); use a smaller image") from e
    except Exception as e:  # noqa: BLE001 - whatever Pillow raises on these bytes, the file is bad
        why = ("not an image format Pillow knows" if isinstance(e, UnidentifiedImageError)
               else f"{type(e).__name__}: {' '.join(str(e).split())}")
        raise DataError(f"{name}: not a readable image file ({why}); check the file, or pass --skip_bad_files to skip "
                        "it") from e
    try:
        ImageOps.exif_transpose(im, in_place=True)
    except Exception:  # noqa: BLE001 - a broken EXIF block leaves the pixels as stored
        logger.warning("%s: unreadable EXIF orientation; the image is used as stored", name)
    return _to_rgb(im, name, rawmodes)


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_CONVERTIBLE_MODES = ("RGB", "L", "1", "P", "CMYK", "YCbCr", "HSV", "LAB", "RGBX")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")


def _to_rgb(im, name: str, rawmodes: set | None = None) -> np.ndarray:
    """8-bit RGB of a loaded Pillow image (see the module docstring); `rawmodes`: the sample
    formats of the file, as Pillow's tile list named them before loading."""
    mode = im.mode
    if im.width == 0 or im.height == 0:
        raise DataError(f"{name}: the image has no pixels ({im.height}x{im.width} (HxW)); remove the file")
    if mode == "F":
        raise DataError(f"{name}: floating-point pixels (image mode F) have no defined 8-bit range; save the image "
                        "with 8-bit or 16-bit integer pixels")
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(im).astype(np.int64)
        sixteen = mode in _SIXTEEN_BIT_MODES or any(str(r).startswith("I;16") for r in rawmodes or ())
        low, high = int(values.min()), int(values.max())
        if not sixteen and 0 <= low and high <= 255:
            gray = values.astype(np.uint8)   # 32-bit samples holding 8-bit values
        elif 0 <= low and high <= 65535:
            gray = (values >> 8).astype(np.uint8)
        else:
            raise DataError(f"{name}: 32-bit integer pixels from {low} to {high} have no defined 8-bit range (16-bit "
                            "images hold 0..65535); save the image with 8-bit or 16-bit pixels")
        transparent = im.info.get("transparency")
        if isinstance(transparent, int):  # a transparent gray value: composited on black
            gray = np.where(values == transparent, 0, gray).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode not in _ALPHA_MODES and mode not in _CONVERTIBLE_MODES:
        raise DataError(f"{name}: image mode {mode} is not supported; save the image as RGB or grayscale")
    try:
        if mode in _ALPHA_MODES or "transparency" in im.info:
            rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
            return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
        return np.asarray(im if mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    except ValueError as e:  # e.g. a palette that does not fit the pixels
        raise DataError(f"{name}: image mode {mode} cannot be converted to RGB ({e}); save the image as RGB") from e


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
        # A split level holds class folders; a folder named like a split that holds images
        # itself is a class of a flat tree (a class may be called "test").
        if any(k.lower() in SPLIT_NAMES and children.get(root + (k,)) for k in kids):
            return len(root), True
        if len(kids) == 1:
            only = root + (next(iter(kids)),)
            if children.get(only):
                root = only
                continue
        return len(root), False


def read_image_tree(entries: Iterable[tuple[tuple[str, ...], bool, Callable[[], bytes]]], source: str,
                    image_size: tuple[int, int] | None = None, resize: bool = False, skip_bad_files: bool = False,
                    *, resize_advice: str = RESIZE_ADVICE, offer_skip: bool = True,
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
      resize_advice: what the error about an image of another size advises (e.g. the flag
        that sets `resize`).
      offer_skip: whether errors about a bad file may advise --skip_bad_files (False for a
        caller without that flag).

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
            raise DataError(f"{name}: nested too deep (expected "
                            f"{'split/class/image' if has_splits else 'class/image'} under {source}); move the image "
                            "into its class folder")
        split, cls = key_of(parts)
        by_split.setdefault(split, {}).setdefault(cls, []).append((name, reader))
    for split, cls in sorted(class_dirs):
        if cls not in by_split.get(split, {}):
            raise DataError(f"{os.path.join(source, *([split] if has_splits else []), cls)}: "
                            "class folder is empty (no image files); add its images or remove the folder")
    if not by_split:
        raise DataError(f"{source}: no images found (expected class folders of images, optionally under train/ and "
                        "test/); check the path and the layout")
    class_names = tuple(sorted({c for classes in by_split.values() for c in classes}))
    for split, classes in by_split.items():
        missing = sorted(set(class_names) - set(classes))
        if missing:
            logger.warning("%s: split %r has no folder for classes %s", source, split, missing)

    decode = _Decoder(image_size, resize, skip_bad_files, resize_advice, offer_skip)
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
            raise DataError(f"{source}: split {split!r} has no readable images (every file was skipped); check the "
                            "files (without --skip_bad_files each is refused with its reason)")
        out[split] = (np.stack(images), np.asarray(labels, np.int64))
        logger.info("%s: %s split, %d images of %d classes", source, split, len(labels), len(class_names))
    return out, class_names


def read_path(path: str, image_size: tuple[int, int] | None = None, resize: bool = False,
              skip_bad_files: bool = False, *, resize_advice: str = RESIZE_ADVICE,
              ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[str, ...]]:
    """Reads an image-folder tree from a directory or an archive (see `read_image_tree`).

    Raises:
      DataError: missing path, unsupported file type, or any `read_image_tree` problem.
    """
    _check_exists(path)
    if os.path.isfile(path):
        if not is_archive(path):
            raise DataError(f"{path}: not a supported archive (expected a folder or one of "
                            f"{', '.join(ARCHIVE_SUFFIXES)}); pass a folder of class folders or an archive of one")
        entries = iter_archive(path)
    else:
        entries = iter_directory(path)
    return read_image_tree(entries, path, image_size=image_size, resize=resize, skip_bad_files=skip_bad_files,
                           resize_advice=resize_advice)


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder; check the path")
    if not os.path.isfile(path) and not os.path.isdir(path):
        raise DataError(f"{path}: not a regular file or folder; pass a folder of images or an archive")


# The advice to skip a bad file, in the messages of the reader and the decoder (removed for
# callers without --skip_bad_files).
_SKIP_ADVICE = re.compile(r",? or pass --skip_bad_files( to skip it)?")


class _Decoder:
    """Decodes files one by one and holds every image to one size (the first image's, unless
    given): other sizes are resized or refused, unreadable files skipped or refused."""

    def __init__(self, image_size, resize: bool, skip_bad_files: bool, resize_advice: str = RESIZE_ADVICE,
                 offer_skip: bool = True):
        self.expected = tuple(int(d) for d in image_size) if image_size is not None else None
        self.first: str | None = None
        self.resize, self.skip, self.advice, self.offer_skip = resize, skip_bad_files, resize_advice, offer_skip

    def __call__(self, reader: Callable[[], bytes], name: str) -> np.ndarray | None:
        try:
            try:
                data = reader()
            except OSError as e:
                error = from_os_error(e, path=name)
                if error is None:
                    raise
                raise DataError(str(error)) from e
            img = decode_image(data, name)
        except DataError as e:
            if not self.skip:
                if self.offer_skip:
                    raise
                raise DataError(_SKIP_ADVICE.sub("", str(e))) from e
            logger.warning("skipped %s", e)
            return None
        if self.expected is None:
            self.expected, self.first = img.shape[:2], name
        if img.shape[:2] != self.expected:
            if not self.resize:
                ref = f" (the size of {self.first})" if self.first else ""
                raise DataError(f"{name}: image is {img.shape[0]}x{img.shape[1]} (HxW), expected "
                                f"{self.expected[0]}x{self.expected[1]}{ref}; {self.advice}")
            img = _resize(img, self.expected)
        return img


def _resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BILINEAR), dtype=np.uint8)


def read_images(path: str, image_size: tuple[int, int] | None = None, resize: bool = False,
                skip_bad_files: bool = False, *, resize_advice: str = RESIZE_ADVICE,
                offer_skip: bool = True) -> tuple[np.ndarray, list[str]]:
    """Reads every image file under a folder or archive, in sorted path order, ignoring any
    class structure (for unlabelled images). Returns (uint8 images, file names).

    Raises:
      DataError: missing path, no images, a non-image file (unless skipped), or a wrong size.
    """
    _check_exists(path)
    if os.path.isfile(path) and not is_archive(path):
        raise DataError(f"{path}: not a supported archive (expected a folder or one of {', '.join(ARCHIVE_SUFFIXES)}); "
                        "pass a folder of images or an archive of one")
    entries = iter_archive(path) if os.path.isfile(path) else iter_directory(path)
    files = sorted(((parts, reader) for parts, is_dir, reader in entries if not is_dir and not _is_ignored(parts)),
                   key=lambda item: item[0])
    decode = _Decoder(image_size, resize, skip_bad_files, resize_advice, offer_skip)
    images, names = [], []
    for parts, reader in files:
        img = decode(reader, os.path.join(path, *parts))
        if img is not None:
            images.append(img)
            names.append("/".join(parts))
    if not images:
        raise DataError(f"{path}: no images found; check the path (every image file under it is read)")
    return np.stack(images), names
