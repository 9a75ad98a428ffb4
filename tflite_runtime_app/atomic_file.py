"""Atomic file replacement (temp file in the same folder, fsync, rename, fsync the folder),
shared by the device app's checkpoints and the library's outputs.

A temporary file is named `.<name>.<pid>.<8 random characters><suffix>` (suffix `.tmp` by
default) after the process writing it. A writer killed half-way leaves its temporary behind;
the next write of the same file removes the temporaries of writers that are no longer
running on this machine, and never one of a live process. (Whether a writer on another
machine is alive cannot be told, so a folder shared over a network file system should not
be written by two machines at once.)
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
from typing import Iterator

from tflite_runtime_app.errors import UserError


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


def _prefix(path: str) -> str:
    return "." + os.path.basename(path) + f".{os.getpid()}."


def temp_name(path: str | os.PathLike, suffix: str = "") -> str:
    """A fresh, not yet existing temporary name next to `path` (for `os.link` and the like,
    which need a name rather than a file), in the form the stale-file cleaner recognises."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        candidate = os.path.join(directory, _prefix(path) + secrets.token_hex(4) + (suffix or ".tmp"))
        if not os.path.lexists(candidate):
            return candidate


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (True when it cannot be told)."""
    if os.name != "posix":
        return True  # os.kill would terminate the process on Windows
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. PermissionError: it exists, under another user
    return True


def stale_temporaries(path: str | os.PathLike, suffix: str = "") -> list[str]:
    """Temporaries of `path` (see the module docstring) whose writer is no longer running."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(r"\." + re.escape(os.path.basename(path)) + r"\.(\d+)\.[A-Za-z0-9_]{8}"
                         + re.escape(suffix or ".tmp") + r"\Z")
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    out = []
    for name in sorted(names):
        match = pattern.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _pid_alive(pid):
            out.append(os.path.join(directory, name))
    return out


def remove_stale_temporaries(path: str | os.PathLike, suffix: str = "") -> list[str]:
    """Removes the temporaries a killed writer of `path` left behind; returns their paths."""
    removed = []
    for stale in stale_temporaries(path, suffix):
        try:
            if os.path.isfile(stale) and not os.path.islink(stale):
                os.remove(stale)
                removed.append(stale)
        except OSError:
            pass  # another cleaner got there first, or the folder is read-only: harmless
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path next to `path`; on success renames it onto `path`.

    On any exception the temporary file is removed and `path` is untouched. Temporaries that
    earlier, killed writers of `path` left behind are removed first.

    Args:
      path: the final destination.
      suffix: suffix of the temporary name (some writers insist on one, e.g. `.keras`).
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isfile(path):
        kind = "a folder" if os.path.isdir(path) else "not a regular file (a pipe, device or socket)"
        raise UserError(f"{path}: is {kind}, which a write would replace; write to a file path instead")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(path, suffix)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=suffix or ".tmp", dir=directory)
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
