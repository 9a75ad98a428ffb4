"""Outputs that match their inputs: a stage run again into a used folder leaves no file of the
earlier run beside its own."""

from __future__ import annotations

import json
import os


def test_a_reexport_without_data_removes_the_earlier_int8_model_and_replay(pipeline_inputs, tmp_path):
    """Before: a float16 re-export (no --data) kept the earlier export's model_int8.tflite and
    replay.npz, which belong to another model."""
    from edgekt.export.pipeline import export_model

    out = str(tmp_path / "export")
    first = export_model(pipeline_inputs["teacher"], out, data_source=pipeline_inputs["tree"], batch_size=8,
                         replay_per_class=2)
    assert first["inference_quantization"] == "int8"
    assert {"model_int8.tflite", "replay.npz"} <= set(os.listdir(out))
    second = export_model(pipeline_inputs["teacher"], out, batch_size=8)
    assert second["inference_quantization"] == "float16"
    assert sorted(os.listdir(out)) == ["metrics.json", "model_float16.tflite", "model_meta.json",
                                       "model_trainable.tflite"]
    with open(os.path.join(out, "model_meta.json")) as f:
        assert json.load(f)["inference_model"] == "model_float16.tflite"


def test_refused_runs_leave_no_output_folder(pipeline_inputs, tmp_path):
    """A run refused after it started (bad data found while loading) leaves no --out_dir (nor
    the folders above it that it created) when it wrote nothing there."""
    from harness import assert_user_error, run_pipelines

    teacher, big = pipeline_inputs["teacher"], pipeline_inputs["big"]
    cases = {
        "pipelines.prune": [f"--teacher={teacher}", f"--data={big}"],
        "pipelines.transfer": [f"--teacher={teacher}", "--student=wrn-10-1", f"--data={big}"],
        "pipelines.export_tflite": [f"--model={teacher}", f"--data={big}"],
        "pipelines.train_cloud": [f"--data={pipeline_inputs['tree']}"],
        "pipelines.sweep": [f"--teacher={teacher}", f"--data={big}"],
    }
    for module, args in cases.items():
        out = tmp_path / module / "new" / "run"
        (result,) = run_pipelines(module, [args + [f"--out_dir={out}"]])
        assert_user_error(result)
        assert not (tmp_path / module / "new").exists(), (module, result.stderr[-500:])


def test_remove_empty_tree_keeps_any_file(tmp_path):
    from pipelines.flag_utils import remove_empty_tree

    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "kept.txt").write_text("x")
    remove_empty_tree(str(tmp_path / "a"))
    assert (tmp_path / "a" / "b" / "kept.txt").exists() and (tmp_path / "a" / "b" / "c").exists()
    (tmp_path / "a" / "b" / "kept.txt").unlink()
    remove_empty_tree(str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()
