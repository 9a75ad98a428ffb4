"""Per-epoch training checkpoints: a `.keras` file (model + optimizer) and a JSON state,
each written atomically, so an interrupted run resumes from the last complete epoch."""

from __future__ import annotations

import glob
import json
import os
import zipfile

import keras
from absl import logging

from edgekt import atomic
from edgekt.errors import UserError

STATE_FILE = "checkpoint.json"


class CheckpointManager:
    """Saves and finds the latest checkpoint in `directory`.

    The state JSON names the model file it belongs to and is written after that file, so
    the pair is always consistent: a crash between the two leaves the previous state, which
    still names the previous (kept) model file.
    """

    def __init__(self, directory: str, keep: int = 1):
        if keep < 1:
            raise ValueError(f"keep must be >= 1. Received: keep={keep}")
        self.directory = directory
        self.keep = keep

    @property
    def state_path(self) -> str:
        return os.path.join(self.directory, STATE_FILE)

    def read_state(self) -> dict | None:
        """The latest complete state, or None when there is no checkpoint."""
        if not os.path.exists(self.state_path):
            return None
        try:
            with open(self.state_path) as f:
                state = json.load(f)
            if not isinstance(state, dict):
                raise ValueError(f"a JSON {type(state).__name__}, not an object")
        except (OSError, ValueError) as e:
            raise UserError(f"{self.state_path}: unreadable checkpoint state ({e}); pass --overwrite (or remove the "
                            "checkpoint folder) to start over") from e
        model_path = os.path.join(self.directory, state.get("model_file", ""))
        if not os.path.isfile(model_path):
            raise UserError(f"{self.state_path}: names model file {state.get('model_file')!r}, which is missing; remove "
                            "the checkpoint folder (or pass --overwrite) to start over")
        return state

    def load_model(self, state: dict) -> keras.Model:
        """Loads the checkpoint's model with its optimizer state (call under the same
        distribution scope as training)."""
        path = os.path.join(self.directory, state["model_file"])
        try:
            return keras.models.load_model(path, compile=True)
        except (ValueError, OSError, zipfile.BadZipFile, KeyError) as e:
            raise UserError(f"{path}: the checkpoint of epoch {state.get('epoch')} is unreadable "
                            f"({type(e).__name__}: {' '.join(str(e).split())[:120]}); restore it, or pass --overwrite "
                            "to start the training over") from e

    def save(self, model: keras.Model, state: dict) -> str:
        """Writes the model (with optimizer) then the state naming it; prunes old files."""
        epoch = int(state["epoch"])
        model_file = f"ckpt-{epoch:04d}.keras"
        path = os.path.join(self.directory, model_file)
        atomic.write_with(path, model.save, suffix=".keras")
        atomic.write_json(self.state_path, {**state, "model_file": model_file})
        kept = sorted(glob.glob(os.path.join(self.directory, "ckpt-*.keras")))
        for old in kept[: -self.keep]:
            if os.path.basename(old) != model_file:
                try:
                    os.remove(old)
                except OSError as e:
                    logging.warning("could not remove old checkpoint %s: %s", old, e)
        return path
