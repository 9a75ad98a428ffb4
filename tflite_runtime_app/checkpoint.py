"""On-device checkpoints: weights (from `get_weights`) and loop state in one .npz, written
atomically (temp file, fsync, rename). The previous checkpoint is kept as `<name>.prev.npz`.

A run killed at any moment leaves either the old or the new checkpoint, never a partial one;
the temporary file it was writing is removed by the next write. A write that fails (a full
disk, a read-only folder) leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import stat
import time
import zipfile
import zlib

import numpy as np

from tflite_runtime_app.atomic_file import atomic_path, remove_stale_temporaries, temp_name
from tflite_runtime_app import npz
from tflite_runtime_app.errors import UserError, from_os_error
from tflite_runtime_app.image_folder import DataError

STATE_KEY = "__state__"
WEIGHT_PREFIX = "w/"
BEST_PREFIX = "best/"
# Testing aid: seconds to pause half-way through writing a checkpoint (to kill a run there).
DELAY_ENV = "EDGEKT_APP_CHECKPOINT_WRITE_DELAY"
# What to do about a checkpoint `learn` cannot use.
LEARN_ADVICE = "pass another --checkpoint, or --restart to start over (the file is kept until a new checkpoint " \
               "replaces it)"


class CheckpointError(UserError):
    """A checkpoint is unreadable or does not belong to this model; nothing was changed."""


def previous_path(path: str) -> str:
    root = path[:-4] if path.endswith(".npz") else path
    return root + ".prev.npz"


def first_non_finite(weights: dict[str, np.ndarray]) -> tuple[str, int] | None:
    """(name, count) of the first weight (in name order) holding NaN or inf, or None; values
    are judged as the model holds them (float32: 1e39 in a float64 array is inf there)."""
    for name in sorted(weights):
        value = np.asarray(weights[name])
        if value.dtype.kind in "fc":
            with np.errstate(over="ignore", invalid="ignore"):
                as_model = value.astype(np.complex64 if value.dtype.kind == "c" else np.float32)
            bad = int(np.count_nonzero(~np.isfinite(as_model)))
            if bad:
                return name, bad
    return None


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# What `learn` writes into a checkpoint's state and reads back: key -> (check, what it must be).
_STATE = {"task": (lambda v: isinstance(v, dict), "an object"),
          "epoch": (_count, "an integer >= 0"), "step": (_count, "an integer >= 0"),
          "global_step": (_count, "an integer >= 0"), "bad_epochs": (_count, "an integer >= 0"),
          "best_epoch": (_count, "an integer >= 0"), "epoch_count": (_count, "an integer >= 0"),
          "elapsed": (lambda v: _number(v) and v >= 0, "a number >= 0"),
          "best_elapsed": (lambda v: _number(v) and v >= 0, "a number >= 0"),
          "best": (_number, "a number"), "initial": (_number, "a number"), "epoch_loss": (_number, "a number"),
          "done": (lambda v: isinstance(v, bool), "true or false"),
          "history": (lambda v: isinstance(v, list), "a list")}
_OPTIONAL_STATE = {"learned_classes": (lambda v: v is None or (isinstance(v, list) and all(isinstance(c, str)
                                                                                          for c in v)),
                                       "a list of class names"),
                   "restored_best": (lambda v: isinstance(v, bool), "true or false")}


def state_problem(state: dict) -> str | None:
    """What is wrong with a checkpoint's state (a key missing or of the wrong type), or None."""
    missing = [k for k in _STATE if k not in state]
    if missing:
        return f"lacks {', '.join(repr(k) for k in missing[:4])}"
    for key, (ok, what) in (*_STATE.items(), *_OPTIONAL_STATE.items()):
        if key in state and not ok(state[key]):
            return f"has {key!r} = {json.dumps(state[key])[:60]}, not {what}"
    return None


def describe_load_error(error: BaseException) -> str:
    """np.load's complaint in a few words (its advice to load pickles unsafely left out)."""
    if isinstance(error, ValueError) and "pickle" in str(error):
        return "not an .npz archive"
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def is_pickle_error(error: ValueError, path: str) -> bool:
    """Whether np.load(allow_pickle=False) refused `path` for holding pickled objects (an object
    array inside an .npz, or a pickle file) rather than for being unreadable."""
    if "Object arrays cannot be loaded" in str(error):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"\x80" and "pickle" in str(error)  # the pickle protocol's first byte
    except OSError:
        return False


def remove_stale(path: str) -> None:
    """Removes the temporaries that killed writes of the checkpoint (and of its `.prev`) left."""
    remove_stale_temporaries(path)
    remove_stale_temporaries(previous_path(path))


def save(path: str, weights: dict[str, np.ndarray], state: dict, best: dict[str, np.ndarray] | None = None) -> None:
    """Writes a checkpoint atomically; the one it replaces becomes `<name>.prev.npz`.

    Raises:
      CheckpointError: the write failed (no space, no permission...); the checkpoint that was
        there is unchanged and no temporary file is left.
    """
    arrays = {WEIGHT_PREFIX + k: np.asarray(v) for k, v in weights.items()}
    if best:
        arrays.update({BEST_PREFIX + k: np.asarray(v) for k, v in best.items()})
    arrays[STATE_KEY] = np.asarray(json.dumps(state))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    blob = buffer.getvalue()
    try:
        remove_stale(path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                half = len(blob) // 2
                f.write(blob[:half])
                delay = float(os.environ.get(DELAY_ENV, "0") or 0)
                if delay:
                    f.flush()
                    time.sleep(delay)
                f.write(blob[half:])
            if os.path.exists(path):
                _keep_previous(path)
    except OSError as e:
        error = from_os_error(e, path=path)
        if error is None:
            raise
        why = (e.strerror or os.strerror(e.errno or 0)).lower()
        advice = str(error).rsplit("; ", 1)[-1]
        kept = "the previous checkpoint was kept as it was" if os.path.exists(path) else "none was there before"
        raise CheckpointError(f"{path}: the checkpoint could not be written ({why}); {advice}; {kept}") from e


def _keep_previous(path: str) -> None:
    """Makes the checkpoint about to be replaced `<name>.prev.npz` (a hard link, so it is
    never absent; a copy where the file system has no hard links)."""
    prev = previous_path(path)
    link = temp_name(prev)
    try:
        try:
            os.link(path, link)
        except OSError:
            shutil.copyfile(path, link)
        os.replace(link, prev)
    finally:
        if os.path.lexists(link):
            os.remove(link)


def load(path: str, expected_shapes: dict[str, tuple[int, ...]], *, advice: str = LEARN_ADVICE,
         ) -> tuple[dict[str, np.ndarray], dict, dict[str, np.ndarray]]:
    """Reads a checkpoint and checks it against the model's weights.

    Args:
      path: the .npz file.
      expected_shapes: the model's weight names and shapes.
      advice: what the user can do about a checkpoint that cannot be used (the last part of
        the error message).

    Returns:
      (weights, state, best weights).

    Raises:
      CheckpointError: missing, unreadable, names/shapes differ from `expected_shapes`, or a
        weight holds NaN or inf; the file is left as it is.
    """
    def refuse(why: str, todo: str = advice):
        return CheckpointError(f"{path}: {why}; {todo}")

    def corrupt(e: BaseException):
        todo = (f"resume from {previous_path(path)} with --checkpoint, or start over with --restart"
                if advice == LEARN_ADVICE else advice)
        return refuse(f"corrupt or unreadable checkpoint ({describe_load_error(e)}); it was left as it is", todo)

    if os.path.isdir(path):
        raise refuse("is a folder, not a checkpoint file", "pass the .npz file")
    if not os.path.exists(path):
        raise refuse("no such checkpoint", "check the path (a checkpoint is the .npz that learn writes)")
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise refuse("not a regular file (a pipe, device or socket)", "pass the .npz file that learn writes")
    if zipfile.is_zipfile(path):
        try:
            npz.check(path)
        except DataError as e:
            raise refuse(f"{str(e).split(': ', 1)[1].split('; ')[0]}; it was left as it is",
                         "pass a checkpoint written by learn") from e
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with z:
            arrays = {k: z[k] for k in z.files}
    except OSError as e:
        error = from_os_error(e, path=path)
        if error is None:
            raise corrupt(e) from e
        raise error from e
    except ValueError as e:
        if is_pickle_error(e, path):
            raise refuse("holds pickled Python objects, which are never loaded (they can run code); it was left as "
                         "it is", "pass a checkpoint written by learn") from e
        raise corrupt(e) from e
    except (zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise corrupt(e) from e
    if STATE_KEY not in arrays:
        raise refuse("not an edgekt device checkpoint (no state); it was left as it is")
    try:
        state = json.loads(str(arrays[STATE_KEY]))
    except (ValueError, RecursionError) as e:
        raise refuse(f"its state is not valid JSON ({e}); it was left as it is") from e
    if not isinstance(state, dict):
        raise refuse(f"its state is a {type(state).__name__}, not a JSON object; it was left as it is")
    weights = {k[len(WEIGHT_PREFIX):]: v for k, v in arrays.items() if k.startswith(WEIGHT_PREFIX)}
    best = {k[len(BEST_PREFIX):]: v for k, v in arrays.items() if k.startswith(BEST_PREFIX)}
    missing = sorted(set(expected_shapes) - set(weights))
    extra = sorted(set(weights) - set(expected_shapes))
    if missing or extra:
        raise refuse(f"belongs to another model (missing {missing[:3]}, unexpected {extra[:3]}); it was left as it is")
    for group, values in (("weight", weights), ("best weight", best)):
        for name, value in sorted(values.items()):
            if name in expected_shapes and tuple(value.shape) != tuple(expected_shapes[name]):
                raise refuse(f"{group} {name!r} has shape {tuple(value.shape)}, the model needs "
                             f"{tuple(expected_shapes[name])}; it was left as it is")
            if value.dtype.kind != "f":
                raise refuse(f"{group} {name!r} holds {value.dtype} values, not floating-point weights (learn writes "
                             "float32); it was left as it is")
        bad = first_non_finite(values)
        if bad is not None:
            count = f"{bad[1]} value{'s' if bad[1] > 1 else ''}"
            raise refuse(f"{group} {bad[0]!r} holds NaN or inf ({count}); it was left as it is")
    if best and set(best) != set(expected_shapes):
        raise refuse("its best weights belong to another model; it was left as it is")
    problem = state_problem(state)
    if problem:
        raise refuse(f"its state {problem}; it was left as it is")
    return weights, state, best

