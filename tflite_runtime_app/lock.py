"""One writer per output: an exclusive lock on what a run writes, held for the run.

The lock of an output (a folder or a file, existing or not) is a file in one lock folder
(`$EDGEKT_LOCK_DIR`, default `~/.cache/edgekt/locks`) named by a digest of the output's
canonical path (links resolved as far as the path exists), so every spelling of a path and
every stage of its creation meet at the same lock, and nothing is written beside the output.
It is locked with flock(2): a second run that would write the same output is refused at once
with one line naming the holder (its process id, command and start time); the kernel drops the
lock of a process that ends in any way (even SIGKILL), so a stale lock file is simply taken
over. The file is removed when the run ends.

Standard library only, so the device app, the library and the pipelines share it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
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


LOCK_DIR_ENV = "EDGEKT_LOCK_DIR"


def lock_dir() -> str:
    return os.environ.get(LOCK_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "edgekt", "locks")


def canonical(path: str | os.PathLike) -> str:
    """`path` absolute, with links resolved in the part that exists and `..` folded in the rest."""
    full = os.path.normpath(os.path.abspath(os.fspath(path)))
    head, tail = full, []
    while not os.path.lexists(head) and os.path.dirname(head) != head:
        head, name = os.path.dirname(head), os.path.basename(head)
        tail.append(name)
    return os.path.join(os.path.realpath(head), *reversed(tail))


def lock_path(path: str | os.PathLike) -> str:
    """The lock file of the output `path`."""
    return os.path.join(lock_dir(), hashlib.sha256(canonical(path).encode("utf-8", "surrogateescape")).hexdigest()[:40]
                        + ".lock")


def holder(path: str | os.PathLike) -> str | None:
    """Who holds the lock of `path` (as the refusal names it), or None when nobody does."""
    return _holder_of(lock_path(path))


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
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(lock), exist_ok=True)
    # No place for locks (a read-only home): the run goes on unlocked.
    fd = _acquire(lock, what, advice, canonical(path)) if os.path.isdir(os.path.dirname(lock)) else None
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


def _acquire(lock: str, what: str, advice: str, target: str) -> int | None:
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
    record = {"pid": os.getpid(), "path": target, "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]]),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
    return fd
