"""Bad model files given to the pipeline binaries: missing, not a zip, empty, a folder, a Lambda
(never loaded: it would run code), layers the device cannot train (all listed, as on-device
problems, not pruning ones), a metrics.json beside the model that is not JSON."""

from __future__ import annotations

import os

import pytest

from harness import Case, check_case, run_cases

ARGS = {
    "prune": ["--data={tree}", "--out_dir={out}"],
    "export": ["--out_dir={out}", "--quantization=float16"],
}
def _folders_in_the_way(out):
    """Folders where the export writes two of its files: nothing may be moved in then."""
    for name in ("model_meta.json", "metrics.json"):
        os.makedirs(os.path.join(out, name, "kept"))
        with open(os.path.join(out, name, "kept", "note.txt"), "w") as f:
            f.write("a user's file")


CASES = [
    Case("prune-teacher-missing", "pipelines.prune", ["--teacher={missing}.keras", *ARGS["prune"]],
         ["{missing}.keras", "no such model file"]),
    Case("prune-teacher-not-zip", "pipelines.prune", ["--teacher={not_zip}", *ARGS["prune"]],
         ["{not_zip}", "not a zip file"]),
    Case("prune-teacher-empty-file", "pipelines.prune", ["--teacher={empty_model}", *ARGS["prune"]],
         ["{empty_model}"]),
    Case("prune-teacher-is-a-folder", "pipelines.prune", ["--teacher={out}", *ARGS["prune"]], ["{out}", "folder"]),
    Case("prune-teacher-not-keras-suffix", "pipelines.prune", ["--teacher={tree}", *ARGS["prune"]], ["{tree}"]),
    Case("prune-teacher-lambda", "pipelines.prune", ["--teacher={lambda}", *ARGS["prune"]], ["{lambda}", "'double'"]),
    Case("prune-teacher-metrics-not-json", "pipelines.prune", ["--teacher={bad_meta}", *ARGS["prune"]],
         ["metrics.json", "unreadable"]),
    Case("prune-teacher-metrics-config-not-an-object", "pipelines.prune", ["--teacher={meta_config_text}",
                                                                         *ARGS["prune"]],
         ["metrics.json", "'config'", '"cpu"']),
    Case("prune-teacher-metrics-pool-a-list", "pipelines.prune", ["--teacher={meta_pool_list}", *ARGS["prune"]],
         ["metrics.json", "'device_pool'", "[2000]"]),
    Case("prune-teacher-metrics-val-size-text", "pipelines.prune", ["--teacher={meta_val_size_text}", *ARGS["prune"]],
         ["metrics.json", "config.val_size", '"5000"']),
    Case("prune-teacher-not-an-image-model", "pipelines.prune", ["--teacher={not_images}", *ARGS["prune"]],
         ["--teacher={not_images}", "not images"]),
    Case("prune-teacher-nan-weights", "pipelines.prune", ["--teacher={nan_weights}", *ARGS["prune"]],
         ["{nan_weights}", "NaN or inf"]),
    Case("export-model-nan-weights", "pipelines.export_tflite", ["--model={nan_weights}", "--class_names="
                                                                 + ",".join("abcdefghij"), *ARGS["export"]],
         ["{nan_weights}", "NaN or inf"]),
    Case("export-model-outputs-overflow", "pipelines.export_tflite", ["--model={overflowing}", "--class_names="
                                                                      + ",".join("abcdefghij"), *ARGS["export"]],
         ["{overflowing}", "NaN or inf", "outputs"]),
    Case("soft-labels-model-outputs-overflow", "pipelines.soft_labels",
         ["--model={overflowing}", "--class_names=" + ",".join("abcdefghij"), "--images={tree}/test",
          "--out={out}/soft.npz"], ["--model={overflowing}", "NaN or inf"]),
    Case("soft-labels-serve-model-outputs-overflow", "pipelines.soft_labels",
         ["--model={overflowing}", "--class_names=" + ",".join("abcdefghij"), "--serve", "--port=0"],
         ["--model={overflowing}", "NaN or inf"]),
    Case("export-output-name-taken-by-a-folder", "pipelines.export_tflite",
         ["--model={teacher}", "--class_names=" + ",".join("abcdefghij"), *ARGS["export"]],
         ["{out}/metrics.json", "is a folder", "was left as it was"], prepare=_folders_in_the_way),
    Case("export-trainable-beyond-the-model", "pipelines.export_tflite",
         ["--model={teacher}", "--class_names=" + ",".join("abcdefghij"), *ARGS["export"], "--trainable=last:100000"],
         ["last:100000", "only 10 conv/dense layers", "--trainable=last:10"]),
    Case("export-model-missing", "pipelines.export_tflite", ["--model={missing}.keras", *ARGS["export"]],
         ["{missing}.keras"]),
    Case("export-model-lambda", "pipelines.export_tflite", ["--model={lambda}", "--class_names=" + ",".join("abcdefghij"),
                                                            *ARGS["export"]], ["{lambda}", "'double' (Lambda)"]),
    Case("export-lists-every-off-device-layer", "pipelines.export_tflite",
         ["--model={off_device}", "--class_names=" + ",".join("abcdefghij"), *ARGS["export"]],
         ["{off_device}", "2 problem(s) for on-device training", "'norm' (LayerNormalization)", "'elu' (ELU)"]),
    Case("convert-check-only-lambda", "pipelines.convert", ["--model={lambda}", "--check_only"],
         ["{lambda}", "'double' (Lambda)"]),
    Case("convert-check-only-lists-all", "pipelines.convert", ["--model={off_device}", "--check_only"],
         ["{off_device}", "'norm' (LayerNormalization)", "'elu' (ELU)"]),
    Case("convert-check-only-one-channel", "pipelines.convert", ["--model={gray}", "--check_only"],
         ["{gray}", "1 channel(s)", "RGB"]),
    Case("convert-check-only-no-fixed-size", "pipelines.convert", ["--model={any_size}", "--check_only"],
         ["{any_size}", "(None, None, None, 3)", "no fixed image size"]),
    Case("export-no-fixed-size", "pipelines.export_tflite", ["--model={any_size}", "--class_names="
                                                             + ",".join("abcdefghij"), *ARGS["export"]],
         ["{any_size}", "no fixed image size"]),
    Case("prune-no-fixed-size", "pipelines.prune", ["--teacher={any_size}", *ARGS["prune"]],
         ["(None, None, 3)", "no fixed image size"]),
    Case("convert-model-not-zip", "pipelines.convert", ["--model={not_zip}", "--data={tree}", "--out_dir={out}"],
         ["{not_zip}"]),
    Case("transfer-teacher-missing", "pipelines.transfer",
         ["--teacher={missing}.keras", "--student=wrn-10-1", "--data={tree}", "--out_dir={out}"], ["{missing}.keras"]),
    Case("transfer-student-neither", "pipelines.transfer",
         ["--teacher={teacher}", "--student=resnet", "--data={tree}", "--out_dir={out}"], ["--student=resnet"]),
    Case("sweep-teacher-lambda", "pipelines.sweep", ["--teacher={lambda}", "--data={tree}", "--out_dir={out}"],
         ["{lambda}"]),
    Case("run-all-teacher-missing", "pipelines.run_all",
         ["--teacher={missing}.keras", "--data={tree}", "--out_dir={out}"], ["--teacher={missing}.keras"]),
]


@pytest.fixture(scope="module")
def results(pipeline_inputs, tmp_path_factory):
    return run_cases(CASES, pipeline_inputs, tmp_path_factory.mktemp("model_files"))


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_model_file(results, case_id):
    check_case(results, case_id)


def test_check_only_lists_problems_one_per_line_on_stdout(results):
    result = results["convert-check-only-lists-all"][0]
    listed = [line for line in result.stdout.splitlines() if line.startswith("  - ")]
    assert len(listed) == 2 and "'norm'" in listed[0] and "'elu'" in listed[1]


def test_export_does_not_call_device_problems_pruning_problems(results):
    line = check_case(results, "export-lists-every-off-device-layer")
    assert "cannot be pruned" not in line
