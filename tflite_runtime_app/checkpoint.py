"""On-device checkpoints: weights (from `get_weights`) and loop state in one .npz, written
atomically (temp file, fsync, rename). The previous checkpoint is kept as `<name>.prev.npz`.

A run killed at any moment leaves either the old or the new checkpoint, never a partial one.
"""

from __future__ import annotations

import io
import json
import os
import time
import zipfile

import numpy as np

from tflite_runtime_app.atomic_file import atomic_path
from tflite_runtime_app.errors import UserError

STATE_KEY = "__state__"
WEIGHT_PREFIX = "w/"
BEST_PREFIX = "best/"
# Testing aid: seconds to pause half-way through writing a checkpoint (to kill a run there).
DELAY_ENV = "EDGEKT_APP_CHECKPOINT_WRITE_DELAY"


class CheckpointError(UserError):
    """A checkpoint is unreadable or does not belong to this model; nothing was changed."""


def previous_path(path: str) -> str:
    root = path[:-4] if path.endswith(".npz") else path
    return root + ".prev.npz"


def save(path: str, weights: dict[str, np.ndarray], state: dict, best: dict[str, np.ndarray] | None = None) -> None:
    """Writes a checkpoint atomically; the one it replaces becomes `<name>.prev.npz`."""
    arrays = {WEIGHT_PREFIX + k: np.asarray(v) for k, v in weights.items()}
    if best:
        arrays.update({BEST_PREFIX + k: np.asarray(v) for k, v in best.items()})
    arrays[STATE_KEY] = np.asarray(json.dumps(state))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    blob = buffer.getvalue()
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
            # Keep the checkpoint being replaced (a hard link, so it is never absent).
            link = tmp + ".prev"
            os.link(path, link)
            try:
                os.replace(link, previous_path(path))
            finally:
                if os.path.exists(link):
                    os.remove(link)


def load(path: str, expected_shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray], dict,
                                                                           dict[str, np.ndarray]]:
    """Reads a checkpoint and checks it against the model's weights.

    Returns:
      (weights, state, best weights).

    Raises:
      CheckpointError: unreadable, or names/shapes differ from `expected_shapes`.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}: {e}); it was left as "
                              f"it is — resume from {previous_path(path)} with --checkpoint, or start over with "
                              "--restart") from e
    if STATE_KEY not in arrays:
        raise CheckpointError(f"{path}: not an edgekt device checkpoint (no state)")
    state = json.loads(str(arrays[STATE_KEY]))
    weights = {k[len(WEIGHT_PREFIX):]: v for k, v in arrays.items() if k.startswith(WEIGHT_PREFIX)}
    best = {k[len(BEST_PREFIX):]: v for k, v in arrays.items() if k.startswith(BEST_PREFIX)}
    missing = sorted(set(expected_shapes) - set(weights))
    extra = sorted(set(weights) - set(expected_shapes))
    if missing or extra:
        raise CheckpointError(f"{path}: belongs to another model (missing {missing[:3]}, unexpected {extra[:3]}); "
                              "it was left as it is")
    for name, shape in expected_shapes.items():
        if tuple(weights[name].shape) != tuple(shape):
            raise CheckpointError(f"{path}: weight {name!r} has shape {tuple(weights[name].shape)}, the model needs "
                                  f"{tuple(shape)}; it was left as it is")
    return weights, state, best
