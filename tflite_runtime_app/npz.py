"""What an .npz must be before anything in it is decompressed (data, soft labels, checkpoints,
the soft-label server's request bodies): a zip of a sane number of distinct `.npy` members,
no pickled objects, and arrays whose shape x itemsize fits a limit. A header that claims a
huge shape, or a small member that inflates to gigabytes, is refused by its declared sizes,
never by running out of memory.
"""

from __future__ import annotations

import io
import math
import os
import stat
import struct
import zipfile
import zlib

import numpy as np

from tflite_runtime_app.image_folder import DataError, unpack_budget

MAX_MEMBERS = 16384          # a checkpoint of a large network holds a few thousand arrays
MAX_DIRECTORY_BYTES = 8 << 20
DEFAULT_LIMIT = unpack_budget()  # bytes of all arrays together once decompressed
_END = b"PK\x05\x06"


class NpzTooLarge(DataError):
    """The arrays would take more memory than allowed once decompressed."""


def require_regular_file(path: str, what: str = "file") -> None:
    """Refuses a path that is not a regular file (a folder, a FIFO that would block, a device
    that never ends) before it is opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such {what}; check the path") from None
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror or e}); check the path and its permissions") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"{path}: is a folder, not a {what}; pass the {what}")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a pipe, device or socket); pass a {what} on disk")


def check(source: str | bytes, name: str | None = None, limit: int = DEFAULT_LIMIT,
          max_members: int = MAX_MEMBERS) -> None:
    """Checks an .npz (a path or its bytes) without decompressing it.

    Raises:
      DataError: not a zip, too many or duplicate members, members that are not .npy arrays,
        pickled objects, or unreadable headers; NpzTooLarge: more than `limit` bytes of arrays.
    """
    name = name or (source if isinstance(source, str) else "the .npz")
    if isinstance(source, str):
        require_regular_file(source, ".npz file")
        with open(source, "rb") as f:
            size = f.seek(0, io.SEEK_END)
            f.seek(max(0, size - 22 - 65535))
            tail = f.read()
    else:
        size, tail = len(source), source[-(22 + 65535):]
    end = tail.rfind(_END)
    if end < 0 or len(tail) < end + 22:
        raise DataError(f"{name}: not an .npz archive (no zip directory); save the arrays with np.savez")
    members, directory_bytes = struct.unpack("<HI", tail[end + 10:end + 16])
    if members > max_members or directory_bytes > MAX_DIRECTORY_BYTES or directory_bytes > size:
        raise DataError(f"{name}: a zip of {members} members ({directory_bytes} bytes of directory), not an .npz of "
                        "arrays; save the arrays with np.savez")
    try:
        with zipfile.ZipFile(source if isinstance(source, str) else io.BytesIO(source)) as archive:
            infos = archive.infolist()
            names = [i.filename for i in infos]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise DataError(f"{name}: holds {len(duplicates)} array name(s) twice ({duplicates[:5]}), so which one "
                                "is read is undefined; save the arrays again with np.savez")
            total = 0
            for info in infos:
                shape, dtype, nbytes = _declared(archive, info, name)
                total += nbytes
                if total > limit or info.file_size > limit:
                    raise NpzTooLarge(f"{name}: array {info.filename[:-4][:80]!r} of shape {shape} ({dtype}) brings its "
                                      f"arrays to {max(total, info.file_size)} bytes once decompressed, over the limit "
                                      f"of {limit} bytes; split the data into smaller files")
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as e:
        raise DataError(f"{name}: not a readable .npz archive ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                        "save the arrays again with np.savez") from e


def _declared(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, bytes) of the member's array once loaded, from its .npy header."""
    member = info.filename
    if not member.endswith(".npy"):
        raise DataError(f"{name}: member {member[:80]!r} is not an .npy array; save the arrays with np.savez")
    if info.flag_bits & 0x1:
        raise DataError(f"{name}: member {member[:80]!r} is encrypted; save the arrays with np.savez")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise DataError(f"{name}: member {member[:80]!r} uses zip method {info.compress_type}; save the arrays with "
                        "np.savez or np.savez_compressed")
    try:
        with archive.open(info) as f:
            major, _ = np.lib.format.read_magic(f)
            if major not in (1, 2, 3):
                raise ValueError(f".npy format version {major}")
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, SyntaxError, NotImplementedError) as e:
        raise DataError(f"{name}: array {member[:-4][:80]!r} is not a readable .npy array ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]}); save the arrays again with np.savez") from e
    if dtype.hasobject:
        raise DataError(f"{name}: array {member[:-4][:80]!r} is an object array (pickled Python objects), which is "
                        "never loaded (it can run code); save plain numeric or string arrays with np.savez")
    if any(d < 0 for d in shape):
        raise DataError(f"{name}: array {member[:-4][:80]!r} declares a negative size {shape}; save it again with "
                        "np.savez")
    return shape, dtype, math.prod(shape) * dtype.itemsize
