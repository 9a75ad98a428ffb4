"""Bad flags of the pipeline binaries: one line, exit 2, before any data is read."""

from __future__ import annotations

import pytest

from harness import assert_user_error, run_pipeline_process, run_pipelines

PRUNE = ["--teacher=missing/model.keras", "--data=missing_data", "--out_dir=OUT"]
FLAG_CASES = [
    # (argv, names the error must contain)
    (PRUNE + ["--target_params_ratio=1.5"], ["--target_params_ratio=1.5"]),
    (PRUNE + ["--target_params_ratio=-0.2"], ["--target_params_ratio=-0.2"]),
    (PRUNE + ["--target_params_ratio=nan"], ["--target_params_ratio=nan"]),
    (PRUNE + ["--steps=abc"], ["--steps=abc"]),
    (PRUNE + ["--criterion=magic"], ["--criterion=magic"]),
    (PRUNE + ["--no_such_flag=1"], ["--no_such_flag"]),
    (PRUNE + ["stray"], ["stray"]),
    (PRUNE[1:], ["--teacher"]),
]


@pytest.fixture(scope="module")
def prune_results():
    return run_pipelines("pipelines.prune", [argv for argv, _ in FLAG_CASES])


@pytest.mark.parametrize("index", range(len(FLAG_CASES)), ids=[" ".join(a[3:]) or a[0] for a, _ in FLAG_CASES])
def test_prune_flag_errors(prune_results, index, tmp_path):
    assert_user_error(prune_results[index], *FLAG_CASES[index][1])


def test_a_real_process_gets_one_line_and_exit_2(tmp_path):
    result = run_pipeline_process("pipelines.prune", *PRUNE, "--target_params_ratio=1.5")
    assert_user_error(result, "--target_params_ratio=1.5")
