"""Atomic file writes: a file is either the old complete version or the new complete one."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Sequence

from tflite_runtime_app.atomic_file import (atomic_path, forget_inputs, fsync_dir, input_at, pid_alive, protect_inputs,
                                            refuse_input)

__all__ = ["atomic_path", "forget_inputs", "fsync_dir", "input_at", "pid_alive", "protect_inputs", "refuse_input",
           "write_bytes", "write_csv", "write_json", "write_text", "write_with"]


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as indented, strict JSON to `path` atomically (NaN and inf become null)."""
    write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False,
                                default=lambda v: _finite(_json_default(v))) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_csv(path: str | os.PathLike, rows: list[dict], columns: Sequence[str] | None = None) -> None:
    """Writes `rows` as CSV to `path` atomically; `columns` default to every key, "epoch" and
    "step" first. None is written as an empty cell."""
    if columns is None:
        columns = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("epoch", "step"), k))
    lines = [",".join(columns)]
    lines += [",".join("" if row.get(c) is None else str(row.get(c)) for c in columns) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def write_with(path: str | os.PathLike, writer: Callable[[str], None], suffix: str = "") -> None:
    """Calls `writer(tmp_path)` and renames the result onto `path` atomically."""
    with atomic_path(path, suffix=suffix) as tmp:
        writer(tmp)


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays show up in metrics; keep this module free of a numpy import.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable. Received: {value!r}")
