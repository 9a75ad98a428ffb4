"""Saved state of earlier runs that a pipeline binary cannot resume from: an unreadable or
foreign cloud checkpoint, a pruning run of another setup. Each is refused in one line and left
exactly as it was."""

from __future__ import annotations

import json
import os

import pytest

from harness import Case, assert_user_error, check_case, run_cases


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


def test_a_pruning_run_of_another_setup_is_named_and_overwrite_replaces_it(pipeline_inputs, tmp_path):
    """A used --out_dir holding a pruning run of another setup is refused naming what differs
    and the way out; `--overwrite` replaces it (before, a refused run's state blocked the
    corrected rerun and prune had no --overwrite)."""
    from harness import run_pipelines, snapshot

    out = tmp_path / "prune"
    base = [f"--teacher={pipeline_inputs['teacher']}", f"--data={pipeline_inputs['tree']}", f"--out_dir={out}",
            "--batch_size=8", "--steps=1", "--step_epochs=1", "--final_epochs=0", "--target_params_ratio=0.7"]
    first, = run_pipelines("pipelines.prune", [base + ["--seed=0"]])
    assert first.code == 0, first.stderr[-3000:]
    saved = snapshot(out)
    refused, replaced = run_pipelines("pipelines.prune", [base + ["--seed=1"], base + ["--seed=1", "--overwrite"]])
    line = assert_user_error(refused, "prune_state.json", "seed", "--overwrite", "another --out_dir")
    assert "differs" in line
    assert replaced.code == 0, replaced.stderr[-3000:]
    assert snapshot(out) != saved
    with open(out / "prune_state.json") as f:
        assert json.load(f)["identity"]["config"]["seed"] == 1
