"""One writer per output: an exclusive lock on what a run writes, held for the run.

The lock is a file beside the output (`.NAME.lock` next to `NAME`, a folder or a file) locked
with flock(2): a second run that would write the same output is refused at once with one line
naming the holder (its process id, command and start time); the kernel drops the lock of a
process that ends in any way (even SIGKILL), so a stale lock file is simply taken over. The file
is removed when the run ends.

Standard library only, so the device app, the library and the pipelines share it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import threading
import time
from typing import Iterator

from tflite_runtime_app.errors import UserError

try:
    import fcntl
except ImportError:  # not a POSIX system: runs are not locked
    fcntl = None

# Paths this process holds, with a count (a nested lock of a held path is the same lock).
_held: dict[str, int] = {}
_held_guard = threading.Lock()

# File systems that cannot lock (some network mounts): the run goes on unlocked.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def lock_path(path: str | os.PathLike) -> str:
    """The lock file of `path`: `.NAME.lock` in the folder that holds it."""
    full = os.path.abspath(os.fspath(path)).rstrip(os.sep) or os.sep
    return os.path.join(os.path.dirname(full), "." + os.path.basename(full) + ".lock")


def _inner_lock_path(path: str | os.PathLike) -> str:
    """Where a folder's lock goes when the folder that holds it cannot be written (`/tmp`)."""
    return os.path.join(os.fspath(path), ".edgekt.lock")


def holder(path: str | os.PathLike) -> str | None:
    """Who holds the lock of `path` (as the refusal names it), or None when nobody does."""
    for lock in (lock_path(path), _inner_lock_path(path)):
        who = _holder_of(lock)
        if who is not None:
            return who
    return None


def _holder_of(lock: str) -> str | None:
    if fcntl is None or not os.path.exists(lock):
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return _describe(fd) if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
    finally:
        os.close(fd)
    return None


def _describe(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    except (OSError, ValueError):
        record = {}
    if not isinstance(record, dict) or "pid" not in record:
        return "another process (it is starting)"
    text = f"process {record.get('pid')}"
    details = [str(record[k])[:160] for k in ("command", "since") if record.get(k)]
    return text + (f" ({', since '.join(details)})" if details else "")


def _make_parents(folder: str) -> list[str]:
    """Creates `folder` and its missing parents; returns those it created, deepest first."""
    made = []
    while folder and not os.path.isdir(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    for path in reversed(made):
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
    return made


def _remove_empty(folders: list[str]) -> None:
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            break


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, what: str, advice: str) -> Iterator[None]:
    """Holds the lock of `path` for the body.

    Args:
      path: the output (a folder or a file; it need not exist).
      what: how the refusal names it, e.g. "--out_dir=runs/a".
      advice: what to do when another run holds it.

    Raises:
      UserError: another process holds the lock (`what: in use by process N (...); advice`).
    """
    lock = lock_path(path)
    if os.path.isdir(path) and not os.access(os.path.dirname(lock), os.W_OK):
        lock = _inner_lock_path(path)
    with _held_guard:
        if lock in _held:
            _held[lock] += 1
            reentered = True
        else:
            reentered = False
    if reentered or fcntl is None:
        try:
            yield
        finally:
            if reentered:
                with _held_guard:
                    _held[lock] -= 1
        return
    created = _make_parents(os.path.dirname(lock))
    fd = _acquire(lock, what, advice, created)
    with _held_guard:
        _held[lock] = 1
    try:
        yield
    finally:
        with _held_guard:
            del _held[lock]
        if fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(fd)
        _remove_empty(created)


def _acquire(lock: str, what: str, advice: str, created: list[str]) -> int | None:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in _NO_LOCKS:
                os.close(fd)
                return None
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise
            who = _describe(fd)
            os.close(fd)
            _remove_empty(created)
            raise UserError(f"{what}: in use by {who}, which writes there now; {advice}") from None
        # The previous holder removes the file as it ends: a lock on a file no longer at the
        # path locks nothing, so take the one that is there.
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    record = {"pid": os.getpid(), "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]]),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    return fd
