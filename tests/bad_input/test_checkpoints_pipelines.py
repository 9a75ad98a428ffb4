"""Saved state of earlier runs that a pipeline binary cannot resume from: an unreadable or
foreign cloud checkpoint, a pruning run of another setup. Each is refused in one line and left
exactly as it was."""

from __future__ import annotations

import json
import os

import pytest

from harness import Case, check_case, run_cases


def _garbage_state(out):
    os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
    with open(os.path.join(out, "checkpoints", "checkpoint.json"), "w") as f:
        f.write("{truncated")


def _list_state(out):
    os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
    with open(os.path.join(out, "checkpoints", "checkpoint.json"), "w") as f:
        json.dump([1, 2], f)


def _state_without_model(out):
    os.makedirs(os.path.join(out, "checkpoints"), exist_ok=True)
    with open(os.path.join(out, "checkpoints", "checkpoint.json"), "w") as f:
        json.dump({"model_file": "epoch_0003.keras", "epoch": 3}, f)


T = ["--data={tree}", "--out_dir={out}", "--val_size=10", "--batch_size=8", "--train_size=40"]
def _model_without_checkpoint(out):
    """A model copied here (or whose checkpoints were removed): training would replace it."""
    with open(os.path.join(out, "model.keras"), "wb") as f:
        f.write(b"another run's model")


CASES = [
    Case("cloud-checkpoint-truncated", "pipelines.train_cloud", T, ["checkpoint.json", "--overwrite"],
         prepare=_garbage_state),
    Case("cloud-checkpoint-not-an-object", "pipelines.train_cloud", T, ["checkpoint.json", "--overwrite"],
         prepare=_list_state),
    Case("cloud-checkpoint-model-missing", "pipelines.train_cloud", T, ["checkpoint.json", "epoch_0003.keras"],
         prepare=_state_without_model),
    Case("cloud-model-of-another-run", "pipelines.train_cloud", T, ["--out_dir={out}", "model.keras", "--overwrite"],
         prepare=_model_without_checkpoint),
]


@pytest.fixture(scope="module")
def results(pipeline_inputs, tmp_path_factory):
    return run_cases(CASES, pipeline_inputs, tmp_path_factory.mktemp("checkpoints"))


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_unusable_checkpoint_is_refused_and_kept(results, case_id):
    check_case(results, case_id)
