"""Runs many command lines of one pipeline binary in one process (one TensorFlow import), the
way `python -m pipelines.NAME ...` runs them: `python pipeline_runner.py pipelines.NAME < cases.json`
where cases.json is a list of argument lists. Prints one JSON list of {code, stdout, stderr}."""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import re
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


# absl's own flags and words that look like flags in an error line.
_NOT_FLAGS = {"help", "helpfull", "helpshort", "flagfile", "name"}


def main() -> None:
    from absl import flags
    from absl import logging as absl_logging

    from pipelines import flag_utils

    module_name = sys.argv[1]
    cases = json.load(sys.stdin)
    module = importlib.import_module(module_name)
    results = []
    for argv in cases:
        flags.FLAGS.unparse_flags()
        out, err = io.StringIO(), io.StringIO()
        code = 0
        # Log lines are part of what the binary prints: every stream handler writes to `err`.
        handlers = [absl_logging.get_absl_handler().python_handler] + [
            h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
        streams = [h.stream for h in handlers]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            for h in handlers:
                h.stream = err
            try:
                rest = flag_utils.parse_flags([module_name] + list(argv), getattr(module, "OUTPUTS", ()))
                flag_utils.guarded(module.main)(rest)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # a bug: the traceback is what the test shows
                traceback.print_exc()
                code = 1
            finally:
                for h, stream in zip(handlers, streams):
                    h.stream = stream
        # Flags an error line advises that this binary does not have (advice the user cannot follow).
        # (in the what-to-do part: the what may be the mistyped flag itself, the why may quote
        # another command line)
        advised = {m for line in err.getvalue().splitlines() if line.startswith("error: ") and "; " in line
                   for m in re.findall(r"(?<![\w-])--([a-z][a-z0-9_]*)", line.rsplit("; ", 1)[1])}
        unknown = sorted(f for f in advised if f not in flags.FLAGS and f not in _NOT_FLAGS)
        results.append({"argv": argv, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue(),
                        "unknown_flags": unknown})
    json.dump(results, sys.__stdout__)


if __name__ == "__main__":
    main()
