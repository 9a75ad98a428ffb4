"""The library's side of the one error convention (`tflite_runtime_app.errors`): what the
user got wrong raises `UserError` (message `<what>: <why>; <what to do>`); the binaries print
it as one `error: ...` line and exit with code 2."""

from tflite_runtime_app.errors import (EXIT_INTERRUPTED, EXIT_USER_ERROR, INTERRUPTED, UserError, describe, fail,
                                       from_os_error, printable)

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "INTERRUPTED", "UserError", "describe", "fail", "from_os_error",
           "printable"]
