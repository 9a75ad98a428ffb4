"""Atomic file replacement (temp file in the same folder, fsync, rename, fsync the folder),
shared by the device app's checkpoints and the library's outputs."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def fsync_dir(directory: str) -> None:
    """Makes a rename in `directory` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path next to `path`; on success renames it onto `path`.

    On any exception the temporary file is removed and `path` is untouched.

    Args:
      path: the final destination.
      suffix: suffix of the temporary name (some writers insist on one, e.g. `.keras`).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix or ".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
