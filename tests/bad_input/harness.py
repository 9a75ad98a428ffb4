"""The bad-input suite's harness (`from harness import ...`): run the device app or a pipeline binary on a bad input and
check the convention: exit code 2, one line `error: <what>: <why>; <what to do>` naming the
input, no traceback, and nothing already saved changed.

Files are `test_<input class>_<side>.py`; the input classes are model_files, checkpoints,
metadata, images (folders, archives, .npz), labels (labels and soft labels), flags, http.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys

from conftest import REPO_ROOT

ERROR_LINE = re.compile(r"^error: (?P<what>.+?): (?P<why>.+); (?P<todo>.+)$")


@dataclasses.dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error: ")]


def assert_user_error(result: Result, *names: str) -> str:
    """Exit code 2, exactly one `error:` line in the convention's form that names every one of
    `names`, and no traceback. Returns the line."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.code == 2, (result.code, result.stderr[-3000:])
    assert len(result.error_lines) == 1, result.stderr[-3000:]
    line = result.error_lines[0]
    assert ERROR_LINE.match(line), f"not `error: <what>: <why>; <what to do>`: {line}"
    for name in names:
        assert name in line, f"{name!r} not named in: {line}"
    return line


def run_app(*args: str) -> Result:
    """The device app in this process (`python -m tflite_runtime_app ARGS`)."""
    from tflite_runtime_app.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    result = Result(int(code or 0), out.getvalue(), err.getvalue())
    _check_app_advice(args, result)
    return result


def _app_flags(command: str | None) -> set[str]:
    """The flags `python -m tflite_runtime_app COMMAND` has (every command's when unknown)."""
    import argparse

    from tflite_runtime_app.__main__ import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    chosen = [subs[command]] if command in subs else list(subs.values())
    return {opt[2:] for p in chosen for a in p._actions for opt in a.option_strings if opt.startswith("--")}


def _check_app_advice(args, result: Result) -> None:
    """Every flag an error line advises (its what-to-do part: the why may quote another command
    line) is one the command has."""
    advised = {m for line in result.error_lines if "; " in line
               for m in re.findall(r"(?<![\w-])--([a-z][a-z0-9_]*)", line.rsplit("; ", 1)[1])}
    unknown = advised - _app_flags(args[0] if args else None) - {"help", "name"}
    assert not unknown, f"the app's advice names flags that {args[:1]} does not have: {sorted(unknown)}: {result.error_lines}"


def run_app_process(*args: str, timeout: float = 300) -> Result:
    """The device app as its own process, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "tflite_runtime_app", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": REPO_ROOT})
    return Result(proc.returncode, proc.stdout, proc.stderr)


def _file_size_limit(limit: int):
    """For a child process: files larger than `limit` bytes cannot be written (EFBIG), as on a
    full disk (SIGXFSZ ignored so the write fails instead of killing the process)."""
    def apply():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def run_pipelines(module: str, cases: list[list[str]], timeout: float = 900,
                  file_size_limit: int | None = None) -> list[Result]:
    """Many command lines of one binary (`python -m MODULE ARGS`) in one process; with
    `file_size_limit`, no file larger than that many bytes can be written (a full disk)."""
    runner = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pipeline_runner.py")
    proc = subprocess.run([sys.executable, runner, module], input=json.dumps(cases), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"},
                          preexec_fn=_file_size_limit(file_size_limit) if file_size_limit else None)
    assert proc.returncode == 0, proc.stderr[-5000:]
    results = [Result(r["code"], r["stdout"], r["stderr"]) for r in json.loads(proc.stdout)]
    # Advice must name flags the binary has.
    wrong = [(r["unknown_flags"], result.error_lines) for r, result in zip(json.loads(proc.stdout), results)
             if r["unknown_flags"]]
    assert not wrong, f"{module} advises flags it does not have: {wrong}"
    return results


def run_pipeline_process(module: str, *args: str, timeout: float = 900) -> Result:
    """One binary as its own process, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return Result(proc.returncode, proc.stdout, proc.stderr)


def snapshot(*paths) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders), to show nothing saved changed."""
    out = {}
    for path in map(str, paths):
        files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        for f in sorted(files):
            with open(f, "rb") as fh:
                out[f] = hashlib.sha256(fh.read()).hexdigest()
    return out


@dataclasses.dataclass
class Case:
    """One bad command line of a pipeline binary: `argv` and `names` are templates filled from
    the inputs (`{tree}`, `{teacher}`, ...), `{out}` (the case's own output folder, which holds
    a file saved earlier) and `{missing}` (a path that does not exist). `prepare(out)` may put
    more saved files into the output folder first."""

    id: str
    module: str
    argv: list
    names: list
    prepare: object = None


def run_cases(cases: list[Case], inputs: dict, root) -> dict:
    """Runs every case (one process per binary) and returns {id: (Result, output folder,
    snapshot of the output folder before the run)}."""
    filled, before = {}, {}
    for case in cases:
        out = os.path.join(str(root), case.id)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "saved_earlier.json"), "w") as f:
            json.dump({"case": case.id}, f)
        if case.prepare is not None:
            case.prepare(out)
        values = {**inputs, "out": out, "missing": os.path.join(str(root), "no_such_path")}
        filled[case.id] = ([a.format(**values) for a in case.argv], [n.format(**values) for n in case.names], out)
        before[case.id] = snapshot(out)
    results = {}
    for module in sorted({c.module for c in cases}):
        ids = [c.id for c in cases if c.module == module]
        for case_id, result in zip(ids, run_pipelines(module, [filled[i][0] for i in ids])):
            results[case_id] = (result, filled[case_id][1], filled[case_id][2], before[case_id])
    return results


def check_case(results: dict, case_id: str) -> str:
    """The case's convention (exit 2, one named line) and that its output folder is unchanged."""
    result, names, out, before = results[case_id]
    line = assert_user_error(result, *names)
    assert snapshot(out) == before, f"{out} changed"
    return line

# -- device app helpers ---------------------------------------------------------------------------

def copy_device_model(device_export, dest) -> str:
    """A private copy of the `device_export` folder under `dest` (to modify its files); returns
    the path of its model_trainable.tflite."""
    import shutil

    folder = os.path.join(str(dest), "model")
    shutil.copytree(device_export[0], folder)
    return os.path.join(folder, "model_trainable.tflite")


def device_model_path(device_export) -> str:
    return os.path.join(device_export[0], "model_trainable.tflite")


def real_images(cifar, n: int, split: str = "test", start: int = 0):
    """(uint8 images, int labels) of `n` real CIFAR-10 images, classes in turn (image i has
    class i % 10), so any prefix holds several classes."""
    import numpy as np

    data = cifar[split]
    per_class = [np.flatnonzero(data.labels == c) for c in range(10)]
    idx = np.array([per_class[i % 10][start + i // 10] for i in range(n)])
    return data.images[idx], data.labels[idx].astype(np.int64)


def write_npz(path, **arrays) -> str:
    import numpy as np

    np.savez(str(path), **arrays)
    return str(path)


def app_json(result: Result) -> dict:
    """The final JSON line of a successful run (strict JSON: NaN or inf are refused)."""
    assert result.code == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]

    def refuse(constant):
        raise AssertionError(f"not valid JSON: {constant} in {result.stdout[-500:]}")

    return json.loads(result.stdout.strip().splitlines()[-1], parse_constant=refuse)
