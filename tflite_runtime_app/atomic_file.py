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
import hashlib
import os
import re
import secrets
import stat
import tempfile
from typing import Iterable, Iterator

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


def _stem(path: str) -> str:
    """The file name as temporaries carry it: shortened, with a digest, when a temporary name
    built from it would pass the file system's limit (255 bytes)."""
    name = os.path.basename(path)
    if len(os.fsencode(name)) <= 200:
        return name
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
    return os.fsdecode(os.fsencode(name)[:100]).rstrip("\ufffd") + "~" + digest


def _prefix(path: str) -> str:
    return "." + _stem(path) + f".{os.getpid()}."


def temp_name(path: str | os.PathLike, suffix: str = "") -> str:
    """A fresh, not yet existing temporary name next to `path` (for `os.link` and the like,
    which need a name rather than a file), in the form the stale-file cleaner recognises."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    while True:
        candidate = os.path.join(directory, _prefix(path) + secrets.token_hex(4) + (suffix or ".tmp"))
        if not os.path.lexists(candidate):
            return candidate


def pid_alive(pid: int) -> bool:
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
    pattern = re.compile(r"\." + re.escape(_stem(path)) + r"\.(\d+)\.[A-Za-z0-9_]{8}"
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
        if pid != os.getpid() and not pid_alive(pid):
            out.append(os.path.join(directory, name))
    return out


def remove_stale_temporaries(path: str | os.PathLike, suffix: str = "") -> list[str]:
    """Removes the temporaries a killed writer of `path` left behind; returns their paths."""
    removed = []
    for stale in stale_temporaries(path, suffix):
        if input_at(stale) is not None:  # named like a temporary, but a file this run reads
            continue
        try:
            if os.path.isfile(stale) and not os.path.islink(stale):
                os.remove(stale)
                removed.append(stale)
        except OSError:
            pass  # another cleaner got there first, or the folder is read-only: harmless
    return removed


# The files this process reads as inputs, by identity (device, inode: a link or another
# spelling of the path is the same file), with what named them. No write replaces one.
_INPUTS: dict[tuple[int, int], str] = {}
_MAX_FILES_PER_INPUT = 1_000_000


def protect_inputs(named: Iterable[tuple[str, str | os.PathLike | None]]) -> None:
    """Registers inputs as (what names it, e.g. "--model=m.tflite"; path): a file, or every file
    under a folder. `atomic_path` then refuses to replace any of them."""
    for what, path in named:
        if not path:
            continue
        path = os.fspath(path)
        try:
            info = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            _INPUTS.setdefault((info.st_dev, info.st_ino), what)
        elif stat.S_ISDIR(info.st_mode):
            count, seen = 0, set()
            # Links to folders are followed, as the readers follow them; each folder once.
            for folder, subfolders, files in os.walk(path, followlinks=True):
                here = os.stat(folder)
                if (here.st_dev, here.st_ino) in seen:
                    subfolders[:] = []
                    continue
                seen.add((here.st_dev, here.st_ino))
                for name in files:
                    full = os.path.join(folder, name)
                    try:
                        inner = os.stat(full)
                    except OSError:
                        continue
                    if stat.S_ISREG(inner.st_mode):
                        _INPUTS.setdefault((inner.st_dev, inner.st_ino), f"{full} (under {what})")
                    count += 1
                    if count >= _MAX_FILES_PER_INPUT:
                        break
                if count >= _MAX_FILES_PER_INPUT:
                    break


def input_at(path: str | os.PathLike) -> str | None:
    """What named the input file `path` is (see `protect_inputs`), or None. The path is taken
    both as the system resolves it and as spelled ("x/new/../m" is "x/m", even before x/new exists)."""
    for spelling in dict.fromkeys((os.fspath(path), os.path.abspath(path))):
        try:
            info = os.stat(spelling)
        except OSError:
            continue
        what = _INPUTS.get((info.st_dev, info.st_ino))
        if what is not None:
            return what
    return None


def forget_inputs() -> None:
    """Clears the registry (for a process that runs several commands, e.g. tests)."""
    _INPUTS.clear()


def refuse_input(path: str | os.PathLike, flag: str | None = None) -> None:
    """Raises UserError when writing `path` would replace an input of this run."""
    what = input_at(path)
    if what is not None:
        named = f"{flag}={os.fspath(path)}" if flag else os.fspath(path)
        advice = f"pass another {flag}" if flag else "write the output to another path or folder"
        raise UserError(f"{named}: is {what}, an input of this run, which writing it would replace; {advice}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path next to `path`; on success renames it onto `path`.

    On any exception the temporary file is removed and `path` is untouched. Temporaries that
    earlier, killed writers of `path` left behind are removed first. A `path` that is an input
    of this run (`protect_inputs`) is refused before anything is written.

    Args:
      path: the final destination.
      suffix: suffix of the temporary name (some writers insist on one, e.g. `.keras`).
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isfile(path):
        kind = "a folder" if os.path.isdir(path) else "not a regular file (a pipe, device or socket)"
        raise UserError(f"{path}: is {kind}, which a write would replace; write to a file path instead")
    refuse_input(path)
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
