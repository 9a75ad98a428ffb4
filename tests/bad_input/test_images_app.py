"""Images for the device app: every image mode decodes to the right 8-bit RGB pixels (16-bit,
palette, transparency, CMYK, 1-bit, EXIF orientation), and bad images, folders, archives and
.npz files get one line naming the file, exit 2, with nothing saved changed. `--resize`
works for folders, archives and .npz alike."""

from __future__ import annotations

import builtins
import errno
import io
import os
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from harness import (app_json, assert_user_error, device_model_path, real_images, run_app, run_app_process, snapshot,
                     write_npz)
from tflite_runtime_app import image_folder
from tflite_runtime_app.image_folder import DataError, decode_image

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def encode(image, fmt="PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16(values: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow writes 16-bit grayscale only): color type 0 gray,
    2 RGB, 4 gray+alpha, 6 RGBA; `values` uint16 [H, W(, C)]."""
    h, w = values.shape[:2]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def bomb_png(side: int = 10000) -> bytes:
    """A small PNG whose header claims side x side pixels (over Pillow's bomb limit)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 100))
            + _chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def pictures(cifar):
    images, labels = real_images(cifar, 20)
    return images, labels


def gray_of(image):
    return np.asarray(Image.fromarray(image).convert("L"))


def over_black(rgb, alpha):
    return ((rgb.astype(np.uint16) * alpha[..., None] + 127) // 255).astype(np.uint8)


def _alpha(shape):
    """A real-looking alpha: opaque centre, fading edges, fully transparent corners."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(y - shape[0] / 2, x - shape[1] / 2)
    return np.clip(255 * (1.2 - d / (shape[0] / 2)), 0, 255).astype(np.uint8)


# -- decoding: (id, encode a real image, what its decoded pixels must be) -------------------------

def _decode_cases():
    def gray3(img):
        return np.repeat(gray_of(img)[..., None], 3, axis=2)

    def palette(img):
        return Image.fromarray(img).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)

    def palette_with_transparency(img):
        p = palette(img)
        return encode(p, transparency=int(np.asarray(p)[0, 0]))

    def palette_expected(img):
        p = palette(img)
        rgb = np.asarray(p.convert("RGB")).copy()
        rgb[np.asarray(p) == np.asarray(p)[0, 0]] = 0  # the transparent entry, over black
        return rgb

    def rgba(img):
        return np.dstack([img, _alpha(img.shape)])

    def la(img):
        return np.dstack([gray_of(img), _alpha(img.shape)])

    return [
        ("16-bit gray PNG", lambda img: encode(gray_of(img).astype(np.uint16) * 257), gray3),
        ("16-bit gray PNG by hand", lambda img: png16(gray_of(img).astype(np.uint16) * 257, 0), gray3),
        ("16-bit gray low bits set", lambda img: png16(gray_of(img).astype(np.uint16) * 256 + 255, 0), gray3),
        ("32-bit int gray TIFF (mode I)", lambda img: encode(gray_of(img).astype(np.int32) * 257, "TIFF"), gray3),
        ("32-bit int gray TIFF holding 8-bit values", lambda img: encode(gray_of(img).astype(np.int32), "TIFF"),
         gray3),
        ("16-bit gray PNG with a transparent gray",
         lambda img: encode(Image.fromarray(gray_of(img).astype(np.uint16) * 257), "PNG",
                            transparency=int(gray_of(img)[0, 0]) * 257),
         lambda img: np.repeat(np.where(gray_of(img) == gray_of(img)[0, 0], 0, gray_of(img))[..., None], 3, axis=2)),
        ("16-bit RGB PNG", lambda img: png16(img.astype(np.uint16) * 257, 2), lambda img: img),
        ("16-bit RGBA PNG opaque", lambda img: png16(np.dstack([img, np.full(img.shape[:2], 255, np.uint8)]
                                                               ).astype(np.uint16) * 257, 6), lambda img: img),
        ("16-bit RGBA PNG translucent", lambda img: png16(rgba(img).astype(np.uint16) * 257, 6),
         lambda img: over_black(img, _alpha(img.shape))),
        ("16-bit gray+alpha PNG", lambda img: png16(la(img).astype(np.uint16) * 257, 4),
         lambda img: over_black(gray3(img), _alpha(img.shape))),
        ("8-bit gray PNG", lambda img: encode(gray_of(img)), gray3),
        ("gray+alpha PNG", lambda img: encode(la(img)), lambda img: over_black(gray3(img), _alpha(img.shape))),
        ("RGBA PNG opaque", lambda img: encode(np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])),
         lambda img: img),
        ("RGBA PNG translucent", lambda img: encode(rgba(img)), lambda img: over_black(img, _alpha(img.shape))),
        ("palette PNG", lambda img: encode(palette(img)), lambda img: np.asarray(palette(img).convert("RGB"))),
        ("palette PNG with transparency", palette_with_transparency, palette_expected),
        ("CMYK TIFF", lambda img: encode(Image.fromarray(img).convert("CMYK"), "TIFF"), lambda img: img),
        ("CMYK JPEG", lambda img: encode(Image.fromarray(img).convert("CMYK"), "JPEG", quality=100), None),
        ("1-bit PNG", lambda img: encode(Image.fromarray(gray_of(img) > 127)),
         lambda img: np.repeat(np.where(gray_of(img) > 127, 255, 0).astype(np.uint8)[..., None], 3, axis=2)),
        ("RGB PNG", lambda img: encode(img), lambda img: img),
        ("RGB TIFF", lambda img: encode(img, "TIFF"), lambda img: img),
        ("RGB BMP", lambda img: encode(img, "BMP"), lambda img: img),
        ("lossless WebP", lambda img: encode(img, "WEBP", lossless=True), lambda img: img),
        ("GIF (first frame)", lambda img: encode(palette(img), "GIF"),
         lambda img: np.asarray(palette(img).convert("RGB"))),
    ]


DECODE_CASES = _decode_cases()


@pytest.mark.parametrize("make,expected", [(m, e) for _, m, e in DECODE_CASES], ids=[c[0] for c in DECODE_CASES])
def test_every_mode_decodes_to_the_right_pixels(pictures, make, expected):
    for img in pictures[0][:3]:
        decoded = decode_image(make(img), "picture")
        assert decoded.dtype == np.uint8 and decoded.shape == img.shape
        if expected is None:  # lossy: close to the original
            assert np.abs(decoded.astype(int) - img).mean() < 8
        else:
            np.testing.assert_array_equal(decoded, expected(img))


def test_palette_png_is_close_to_the_original(pictures):
    img = pictures[0][0]
    p = Image.fromarray(img).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    assert np.abs(decode_image(encode(p), "p.png").astype(int) - img).mean() < 4


def test_exif_orientation_is_applied(pictures):
    img = pictures[0][0][:, :20]  # not square, so a rotation shows in the shape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    decoded = decode_image(encode(img, exif=exif), "rotated.png")
    np.testing.assert_array_equal(decoded, np.rot90(img, k=-1))


REFUSED = [
    # (id, bytes of the file, names in the message)
    ("float pixels (mode F)", lambda img: encode(gray_of(img).astype(np.float32), "TIFF"), ["mode F"]),
    ("32-bit ints beyond 16 bits", lambda img: encode(gray_of(img).astype(np.int32) * 100000, "TIFF"), ["32-bit"]),
    ("decompression bomb", lambda img: bomb_png(), ["too large", "pixels"]),
    ("huge bomb", lambda img: bomb_png(20000), ["too large"]),
    ("over 24 Mpx, under Pillow's limit", lambda img: bomb_png(6000), ["too large", "6000x6000", "24,000,000"]),
    ("not an image", lambda img: b"hello, world\n", ["not a readable image"]),
    ("empty file", lambda img: b"", ["not a readable image"]),
    ("truncated PNG", lambda img: encode(img)[:200], ["not a readable image"]),
]


@pytest.mark.parametrize("make,names", [(m, n) for _, m, n in REFUSED], ids=[c[0] for c in REFUSED])
def test_undecodable_images_are_refused_with_their_name(pictures, make, names):
    with pytest.raises(DataError) as info:
        decode_image(make(pictures[0][0]), "holiday/photo_été.png")
    text = str(info.value)
    assert text.startswith("holiday/photo_été.png: ") and "; " in text
    for name in names:
        assert name in text


# -- the app on bad image inputs --------------------------------------------------------------------

def write_folder(root, images, labels, files=None):
    """Class folders of real PNGs; `files` adds {relative path: bytes}."""
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = os.path.join(root, CLASSES[label])
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:03d}.png"), "wb") as f:
            f.write(encode(img))
    for rel, data in (files or {}).items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return str(root)


def write_zip(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return str(path)


def write_tar(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return str(path)


def tree_members(images, labels):
    return {f"mydata/{CLASSES[label]}/{i:03d}.png": encode(img) for i, (img, label) in enumerate(zip(images, labels))}


def zip_bomb(path, images, labels):
    """A zip of real images plus one member that unpacks to 257 MiB of zeros (256 KiB packed)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, data in tree_members(images, labels).items():
            zf.writestr(name, data)
        with zf.open("mydata/cat/bomb.png", "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(257):
                f.write(chunk)
    return str(path)


class _Zeros(io.RawIOBase):
    def __init__(self, n):
        self.n = n

    def readable(self):
        return True

    def readinto(self, buffer):
        k = min(len(buffer), self.n)
        buffer[:k] = bytes(k)
        self.n -= k
        return k


def tar_bomb(path, images, labels):
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        for name, data in tree_members(images, labels).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("mydata/cat/bomb.png")
        info.size = 257 << 20
        tf.addfile(info, _Zeros(info.size))
    return str(path)


def _app_cases():
    """(id, build(tmp, images, labels) -> (path given to the app, names in the error), command)."""
    def folder_with(rel, make):
        def build(tmp, images, labels):
            root = write_folder(tmp / "data", images, labels, {rel: make(images[0])})
            return root, [rel.split("/")[-1]]
        return build

    def npz_with(**arrays):
        def build(tmp, images, labels):
            values = {"images": images, "labels": labels}
            values.update({k: (v(images, labels) if callable(v) else v) for k, v in arrays.items()})
            values = {k: v for k, v in values.items() if v is not None}
            return write_npz(tmp / "data.npz", **values), ["data.npz"]
        return build

    def raw_file(name, data):
        def build(tmp, images, labels):
            path = tmp / name
            path.write_bytes(data(images, labels) if callable(data) else data)
            return str(path), [name]
        return build

    def mixed_sizes(tmp, images, labels):
        big = np.asarray(Image.fromarray(images[0]).resize((40, 40)))
        root = write_folder(tmp / "data", images, labels, {"cat/big.png": encode(big)})
        return root, ["big.png", "40x40", "--resize"]

    def empty_class(tmp, images, labels):
        root = write_folder(tmp / "data", images, labels)
        os.makedirs(os.path.join(root, "horse_empty"))
        return root, ["horse_empty", "empty"]

    def too_deep(tmp, images, labels):
        return write_folder(tmp / "data", images, labels, {"cat/extra/0.png": encode(images[0])}), ["extra", "deep"]

    def zip_traversal(tmp, images, labels):
        members = tree_members(images, labels)
        members["mydata/../../evil/cat.png"] = encode(images[0])
        return write_zip(tmp / "data.zip", members), ["data.zip", "..", "outside"]

    def tar_traversal(tmp, images, labels):
        members = tree_members(images, labels)
        members["../evil.png"] = encode(images[0])
        return write_tar(tmp / "data.tar.gz", members), ["data.tar.gz", "..", "outside"]

    def truncated_tar(tmp, images, labels):
        path = write_tar(tmp / "data.tar.gz", tree_members(images, labels))
        with open(path, "rb") as f:
            blob = f.read()
        with open(path, "wb") as f:
            f.write(blob[: len(blob) // 2])
        return path, ["data.tar.gz", "truncated"]

    def escape_in_member_name(tmp, images, labels):
        members = tree_members(images, labels)
        members["mydata/cat/\x1b[31mred.png"] = b"not an image"
        return write_zip(tmp / "data.zip", members), ["data.zip", "\\x1b[31mred.png"]

    def sparse_file(name, size):
        def build(tmp, images, labels):
            path = tmp / name
            with open(path, "wb") as f:
                f.truncate(size)
            return str(path), [name, f"{size} bytes"]
        return build

    def fifo(tmp, images, labels):
        path = tmp / "pipe"
        os.mkfifo(path)
        return str(path), ["pipe", "not a regular file"]

    return [
        ("float TIFF in a class folder", folder_with("cat/float.tif",
                                                     lambda img: encode(gray_of(img).astype(np.float32), "TIFF")),
         "evaluate"),
        ("bomb PNG in a class folder", folder_with("cat/bomb.png", lambda img: bomb_png()), "evaluate"),
        ("text file in a class folder", folder_with("cat/notes.png", lambda img: b"not an image"), "evaluate"),
        ("truncated PNG", folder_with("dog/cut.png", lambda img: encode(img)[:300]), "evaluate"),
        ("empty image file", folder_with("dog/empty.png", lambda img: b""), "evaluate"),
        ("unicode name", folder_with("cat/chat_été_猫.png", lambda img: b"\x89PNG broken"), "evaluate"),
        ("mixed sizes without --resize", mixed_sizes, "evaluate"),
        ("empty class folder", empty_class, "evaluate"),
        ("nested too deep", too_deep, "evaluate"),
        ("zip bomb", lambda tmp, x, y: (zip_bomb(tmp / "data.zip", x, y), ["data.zip", "bomb.png", "zip bomb"]),
         "evaluate"),
        ("tar bomb", lambda tmp, x, y: (tar_bomb(tmp / "data.tar.gz", x, y), ["data.tar.gz", "bomb.png"]),
         "evaluate"),
        ("zip path traversal", zip_traversal, "evaluate"),
        ("tar path traversal", tar_traversal, "evaluate"),
        ("corrupt archive", raw_file("data.tar.gz", b"\x1f\x8b" + bytes(500)), "evaluate"),
        ("truncated archive", truncated_tar, "evaluate"),
        ("corrupt zip", raw_file("data.zip", b"PK\x03\x04" + bytes(100)), "evaluate"),
        ("an image is not an archive", raw_file("one.png", lambda x, y: encode(x[0])), "evaluate"),
        ("missing path", lambda tmp, x, y: (str(tmp / "no_such_folder"), ["no_such_folder", "no such file"]),
         "evaluate"),
        ("a named pipe", fifo, "evaluate"),
        ("npz of pickled objects", npz_with(images=lambda x, y: np.array([{"pixels": 1}] * len(x), dtype=object)),
         "evaluate"),
        ("npz scaled to 0..1", npz_with(images=lambda x, y: x.astype(np.float32) / 255), "evaluate"),
        ("npz without images", npz_with(images=lambda x, y: x[:0], labels=lambda x, y: y[:0]), "evaluate"),
        ("npz of zero-size images", npz_with(images=np.zeros((3, 0, 0, 3), np.uint8), labels=np.zeros(3, np.int64)),
         "evaluate"),
        ("npz grayscale", npz_with(images=lambda x, y: x[..., 0]), "evaluate"),
        ("npz one image", npz_with(images=lambda x, y: x[0], labels=lambda x, y: y[:1]), "evaluate"),
        ("npz four channels", npz_with(images=lambda x, y: np.concatenate([x, x[..., :1]], axis=3)), "evaluate"),
        ("npz 16-bit ints", npz_with(images=lambda x, y: x.astype(np.int64) * 257), "evaluate"),
        ("npz booleans", npz_with(images=lambda x, y: x > 127), "evaluate"),
        ("npz NaN pixels", npz_with(images=lambda x, y: np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan,
                                                                 x.astype(np.float32))), "evaluate"),
        ("npz negative floats", npz_with(images=lambda x, y: x.astype(np.float32) - 128), "evaluate"),
        ("npz text pixels", npz_with(images=lambda x, y: x.astype(str)), "evaluate"),
        ("npz without the images key", npz_with(images=None, pixels=lambda x, y: x), "evaluate"),
        ("single array saved as npz", raw_file("data.npz", lambda x, y: _npy(x)), "evaluate"),
        ("npz path is a folder", lambda tmp, x, y: (write_folder(tmp / "data.npz", x, y), ["data.npz", "folder"]),
         "evaluate"),
        ("npz of random bytes", raw_file("data.npz", bytes(range(256)) * 4), "evaluate"),
        ("predict: a float image", raw_file("float.tif", lambda x, y: encode(gray_of(x[0]).astype(np.float32),
                                                                             "TIFF")), "predict"),
        ("predict: a bomb", raw_file("bomb.png", lambda x, y: bomb_png()), "predict"),
        ("predict: folder with a text file", folder_with("cat/readme.txt", lambda img: b"hello"), "predict"),
        ("predict: npz scaled to 0..1", npz_with(images=lambda x, y: x.astype(np.float64) / 255), "predict"),
        ("npz one image scaled among raw ones", npz_with(images=lambda x, y: np.concatenate(
            [x[:3].astype(np.float32), x[3:4].astype(np.float32) / 255, x[4:].astype(np.float32)])), "evaluate"),
        ("predict: one image scaled among raw ones", npz_with(images=lambda x, y: np.concatenate(
            [x[:3].astype(np.float32), x[3:4].astype(np.float32) / 255, x[4:].astype(np.float32)])), "predict"),
        ("predict: an image file larger than any image", sparse_file("big.png", 300 << 20), "predict"),
        ("escape sequence in a member name", escape_in_member_name, "evaluate"),
    ]


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


APP_CASES = _app_cases()
EXTRA_NAMES = {
    "npz scaled to 0..1": ["multiply them by 255"],
    "predict: npz scaled to 0..1": ["multiply them by 255"],
    "npz of pickled objects": ["pickled"],
    "npz one image scaled among raw ones": ["1 of 10 images", "index 3", "multiply them by 255"],
    "predict: one image scaled among raw ones": ["1 of 10 images", "index 3", "multiply them by 255"],
    "bomb PNG in a class folder": ["too large"],
    "float TIFF in a class folder": ["mode F"],
    "npz 16-bit ints": ["int64"],
    "npz without images": ["no images"],
}


@pytest.mark.parametrize("case", APP_CASES, ids=[c[0] for c in APP_CASES])
def test_bad_images_are_one_line_naming_the_file(device_export, pictures, tmp_path, case):
    name, build, command = case
    images, labels = pictures
    path, names = build(tmp_path, images[:10], labels[:10])
    model = device_model_path(device_export)
    before = snapshot(device_export[0], *[p for p in tmp_path.iterdir() if not p.is_fifo()])
    flag = "--data" if command == "evaluate" else "--images"
    line = assert_user_error(run_app(command, f"--model={model}", f"{flag}={path}"), *names,
                             *EXTRA_NAMES.get(name, []))
    assert line.startswith("error: ") and str(tmp_path) in line
    assert snapshot(device_export[0], *[p for p in tmp_path.iterdir() if not p.is_fifo()]) == before


def test_unreadable_image_file_is_named(device_export, pictures, tmp_path, monkeypatch):
    """An image the user may not read (simulated: the tests may run as root)."""
    images, labels = pictures
    root = write_folder(tmp_path / "data", images[:10], labels[:10])
    locked = os.path.join(root, CLASSES[labels[3]], "003.png")
    real_open = builtins.open

    def deny(file, *args, **kwargs):
        if os.fspath(file) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", locked)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    line = assert_user_error(run_app("evaluate", f"--model={device_model_path(device_export)}", f"--data={root}"),
                             locked, "permission denied")
    assert "check the permissions" in line
    # --skip_bad_files skips it like any unreadable file.
    result = app_json(run_app("evaluate", f"--model={device_model_path(device_export)}", f"--data={root}",
                              "--skip_bad_files"))
    assert result["n_images"] == 9


def test_skip_bad_files_skips_bombs_and_float_images(device_export, pictures, tmp_path):
    images, labels = pictures
    root = write_folder(tmp_path / "data", images[:10], labels[:10],
                        {"cat/bomb.png": bomb_png(), "cat/float.tif": encode(gray_of(images[0]).astype(np.float32),
                                                                             "TIFF")})
    result = app_json(run_app("evaluate", f"--model={device_model_path(device_export)}", f"--data={root}",
                              "--skip_bad_files"))
    assert result["n_images"] == 10


def _sizes(images):
    """The images at several sizes (real pixels, resized), as a folder of mixed sizes holds them."""
    sizes = [(32, 32), (40, 40), (24, 36), (64, 48)]
    return [np.asarray(Image.fromarray(img).resize(sizes[i % 4][::-1], Image.BILINEAR)) if sizes[i % 4] != (32, 32)
            else img for i, img in enumerate(images)]


def test_resize_works_for_folders_archives_and_npz(device_export, pictures, tmp_path):
    images, labels = pictures
    images, labels = images[:12], labels[:12]
    mixed = _sizes(images)
    model = device_model_path(device_export)
    folder = tmp_path / "folder"
    for i, (img, label) in enumerate(zip(mixed, labels)):
        (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        (folder / CLASSES[label] / f"{i:03d}.png").write_bytes(encode(img))
    members = {f"data/{CLASSES[label]}/{i:03d}.png": encode(img) for i, (img, label) in enumerate(zip(mixed, labels))}
    archive = write_zip(tmp_path / "data.zip", members)
    tar = write_tar(tmp_path / "data.tar.gz", members)
    big = write_npz(tmp_path / "big.npz", images=np.stack([np.asarray(Image.fromarray(i).resize((40, 40)))
                                                             for i in images]), labels=labels)
    for source in (str(folder), archive, tar, big):
        line = assert_user_error(run_app("evaluate", f"--model={model}", f"--data={source}"), "--resize")
        assert "resize=True" not in line
        result = app_json(run_app("evaluate", f"--model={model}", f"--data={source}", "--resize"))
        assert result["n_images"] == 12, source
    # predict on a folder of mixed sizes, and the resized 32x32 images are the original ones.
    result = app_json(run_app("predict", f"--model={model}", f"--images={folder}", "--resize", "--quiet"))
    assert result["n_images"] == 12
    resized, names = image_folder.read_images(str(folder), image_size=(32, 32), resize=True)
    for got, name in zip(resized, names):
        i = int(name[-7:-4])
        if mixed[i].shape[:2] == (32, 32):
            np.testing.assert_array_equal(got, images[i])


def test_sixteen_bit_folder_predicts_like_the_eight_bit_one(device_export, pictures, tmp_path):
    """The app and the pipelines share the decoder: a folder of 16-bit PNGs of real images gives
    the predictions of their 8-bit originals (it used to decode as white)."""
    images, _ = pictures
    model = device_model_path(device_export)
    eight, sixteen = tmp_path / "eight", tmp_path / "sixteen"
    eight.mkdir()
    sixteen.mkdir()
    for i, img in enumerate(images[:8]):
        (eight / f"{i}.png").write_bytes(encode(img))
        (sixteen / f"{i}.png").write_bytes(png16(img.astype(np.uint16) * 257, 2) if i % 2
                                           else encode(gray_of(img).astype(np.uint16) * 257))
    gray = tmp_path / "gray"
    gray.mkdir()
    for i, img in enumerate(images[:8]):
        (gray / f"{i}.png").write_bytes(encode(img) if i % 2 else encode(gray_of(img)))
    a = app_json(run_app("predict", f"--model={model}", f"--images={gray}", "--quiet"))
    b = app_json(run_app("predict", f"--model={model}", f"--images={sixteen}", "--quiet"))
    assert a == b
    c = app_json(run_app("predict", f"--model={model}", f"--images={eight}", "--quiet"))
    assert [p["top"] for p in c["predictions"]][1::2] == [p["top"] for p in b["predictions"]][1::2]


def test_a_real_process_gets_one_line_and_exit_2(device_export, pictures, tmp_path):
    images, labels = pictures
    path = write_npz(tmp_path / "scaled.npz", images=images.astype(np.float32) / 255, labels=labels)
    before = snapshot(tmp_path, device_export[0])
    result = run_app_process("evaluate", f"--model={device_model_path(device_export)}", f"--data={path}")
    assert_user_error(result, "scaled.npz", "multiply them by 255")
    assert snapshot(tmp_path, device_export[0]) == before


def _npz_with_header(path, shape, payload=b"\0" * 100):
    """An .npz whose images.npy header claims `shape` (uint8) but holds only `payload`."""
    header = {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images.npy", buffer.getvalue() + payload)
        z.writestr("labels.npy", _npy(np.zeros(2, np.int64)))
    return str(path)


def test_hostile_files_in_data_are_refused_by_name(device_export, cifar, tmp_path):
    """A pipe (would block), a link to an endless device, an .npz whose header claims 2.8 TiB,
    and an .npz holding one array name twice: one line each, nothing read first."""
    model = device_model_path(device_export)
    images, labels = real_images(cifar, 4)
    folder = tmp_path / "tree"
    for i, (image, label) in enumerate(zip(images, labels)):
        (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        (folder / CLASSES[label] / f"{i}.png").write_bytes(encode(image))
    os.mkfifo(folder / CLASSES[labels[0]] / "pipe.png")
    assert_user_error(run_app("evaluate", f"--model={model}", f"--data={folder}"), "pipe.png", "not a regular file")
    os.remove(folder / CLASSES[labels[0]] / "pipe.png")
    os.symlink("/dev/zero", folder / CLASSES[labels[0]] / "zero.png")
    assert_user_error(run_app("evaluate", f"--model={model}", f"--data={folder}"), "zero.png", "not a regular file")
    huge = _npz_with_header(tmp_path / "huge.npz", (10 ** 9, 32, 32, 3))
    assert_user_error(run_app("evaluate", f"--model={model}", f"--data={huge}"), "huge.npz", "over the limit")
    twice = tmp_path / "twice.npz"
    with zipfile.ZipFile(twice, "w") as z:
        z.writestr("images.npy", _npy(images))
        z.writestr("labels.npy", _npy(labels))
        with pytest.warns(UserWarning):  # zipfile warns about the duplicate name
            z.writestr("images.npy", _npy(np.zeros_like(images)))
    assert_user_error(run_app("evaluate", f"--model={model}", f"--data={twice}"), "twice.npz", "twice")


def test_writes_never_replace_a_device_or_a_pipe(device_export, cifar, tmp_path):
    model = device_model_path(device_export)
    images, labels = real_images(cifar, 20)
    data = write_npz(tmp_path / "d.npz", images=images, labels=labels)
    fifo = tmp_path / "ck.npz"
    os.mkfifo(fifo)
    line = assert_user_error(run_app("learn", f"--model={model}", f"--data={data}", f"--checkpoint={fifo}",
                                     "--epochs=1", "--restart"), str(fifo))
    assert "regular file" in line and os.path.exists(fifo) and not os.path.isfile(fifo)


def test_a_tar_whose_members_exceed_the_memory_budget_is_refused(device_export, tmp_path, monkeypatch):
    """Members of a tar stream are held until decoded: their total is bounded (here patched to
    1 MiB), so many members under the per-member limit cannot fill the memory either."""
    from tflite_runtime_app import image_folder

    monkeypatch.setattr(image_folder, "unpack_budget", lambda: 1 << 20)
    path = tmp_path / "data.tar"
    with tarfile.open(path, "w") as tf:
        for i in range(3):
            info = tarfile.TarInfo(f"mydata/cat/{i}.png")
            info.size = 600 << 10
            tf.addfile(info, _Zeros(info.size))
    before = snapshot(tmp_path)
    assert_user_error(run_app("evaluate", f"--model={device_model_path(device_export)}", f"--data={path}"),
                      str(path), "unpack to more than 1048576 bytes", "mydata/cat/1.png")
    assert snapshot(tmp_path) == before


def test_zip_members_are_read_one_at_a_time(device_export, tmp_path, monkeypatch):
    """A zip can be read member by member: the same members as above are not refused for their
    total, each is read when it is decoded (and refused as not an image)."""
    from tflite_runtime_app import image_folder

    monkeypatch.setattr(image_folder, "unpack_budget", lambda: 1 << 20)
    path = tmp_path / "data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(3):
            zf.writestr(f"mydata/cat/{i}.png", bytes(600 << 10))
    assert_user_error(run_app("evaluate", f"--model={device_model_path(device_export)}", f"--data={path}"),
                      "0.png", "not a readable image")
