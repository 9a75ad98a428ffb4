"""The one error convention of the device app and of every edgekt binary.

A user error (a bad flag value, a bad file, bad data, a full disk) is reported as one line on
stderr, `error: <what>: <why>; <what to do>`, and the process exits with code 2; nothing
already saved is changed. Anything else is a bug and keeps its traceback (exit code 1).

Numpy-free, so the device app, the library and the pipelines share it.
"""

from __future__ import annotations

import errno
import os
import sys

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # what shells report for Ctrl-C
INTERRUPTED = ("interrupted: stopped by the user (Ctrl-C); run the same command again to resume from what was "
               "saved")


class UserError(ValueError):
    """Bad input from the user; the message reads `<what>: <why>; <what to do>`.

    A subclass of ValueError, so callers that catch ValueError keep working.
    """


def describe(error: BaseException) -> str:
    """The one-line text of a user error (newlines folded)."""
    return " ".join(str(error).split())


def printable(text: str) -> str:
    """`text` with control characters (an escape sequence in a file name, a bell) written as
    escapes, so that what a user named cannot drive the terminal or a log."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def fail(error: BaseException | str) -> int:
    """Prints `error: ...` for `error` and returns the exit code for user errors.

    A file name that is not valid text (undecodable bytes) is printed with escapes, so the
    line itself can always be written; control characters (an escape sequence in a file name)
    are printed as escapes too, never sent to the terminal.
    """
    text = printable(" ".join(error.split()) if isinstance(error, str) else describe(error))
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        text = text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        pass
    print(f"error: {text}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


_OS_ADVICE = {
    errno.ENOSPC: "free some space and run the same command again (files already saved were kept)",
    errno.EDQUOT: "free some space and run the same command again (files already saved were kept)",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or free space, and run the same command again (files "
                 "already saved were kept)",
    errno.EACCES: "check the permissions of the file and of its folder",
    errno.EPERM: "check the permissions of the file and of its folder",
    errno.EROFS: "write the output to a writable folder",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "check the path (a file is where a folder was expected)",
    errno.EISDIR: "pass a file, not a folder",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EMFILE: "raise the open-file limit (ulimit -n) or use fewer threads",
    errno.ELOOP: "check the path (a loop of symbolic links)",
    errno.EIO: "check the storage device and its file system (files already saved were kept)",
}


def from_os_error(error: OSError, *, path: str | os.PathLike | None = None) -> UserError | None:
    """A user error for an OSError about a file the user named or the disk (no space,
    permissions, missing path), or None when it is not one (a bug keeps its traceback).

    `path` names the file when the error itself does not (a write that hit a full disk).
    """
    advice = _OS_ADVICE.get(error.errno)
    if advice is None:
        return None
    what = error.filename if error.filename is not None else (os.fspath(path) if path is not None else "disk")
    if isinstance(what, bytes):
        what = os.fsdecode(what)
    why = error.strerror or os.strerror(error.errno)
    return UserError(f"{what}: {why.lower()}; {advice}")
