"""Bad flags of the pipeline binaries: one line naming the flag and its value, exit 2, before
any model or data is read (the data paths here do not exist, so reading them would fail
differently), and nothing in the output folder changes."""

from __future__ import annotations

import os

import pytest

from harness import Case, assert_user_error, check_case, run_cases, run_pipeline_process

P = ["--teacher={missing}.keras", "--data={missing}", "--out_dir={out}"]
E = ["--model={missing}.keras", "--out_dir={out}"]
T = ["--data={missing}", "--out_dir={out}"]
CASES = [
    Case("prune-ratio-above-1", "pipelines.prune", [*P, "--target_params_ratio=1.5"], ["--target_params_ratio=1.5"]),
    Case("prune-ratio-negative", "pipelines.prune", [*P, "--target_params_ratio=-0.2"], ["--target_params_ratio=-0.2"]),
    Case("prune-ratio-nan", "pipelines.prune", [*P, "--target_params_ratio=nan"], ["--target_params_ratio=nan"]),
    Case("prune-ratio-zero-and-no-policy", "pipelines.prune", [*P, "--target_params_ratio=0"],
         ["--target_params_ratio=0.0", "--max_accuracy_drop"]),
    Case("prune-flops-ratio-inf", "pipelines.prune", [*P, "--target_flops_ratio=inf"], ["--target_flops_ratio=inf"]),
    Case("prune-steps-not-int", "pipelines.prune", [*P, "--steps=abc"], ["--steps=abc"]),
    Case("prune-steps-zero", "pipelines.prune", [*P, "--steps=0"], ["--steps=0"]),
    Case("prune-floor-one", "pipelines.prune", [*P, "--stream_floor=1"], ["--stream_floor=1.0"]),
    Case("prune-criterion-unknown", "pipelines.prune", [*P, "--criterion=magic"], ["--criterion=magic"]),
    Case("prune-negative-val-size", "pipelines.prune", [*P, "--val_size=-5"], ["--val_size=-5"]),
    Case("prune-unknown-flag", "pipelines.prune", [*P, "--no_such_flag=1"], ["--no_such_flag"]),
    Case("prune-stray-argument", "pipelines.prune", [*P, "stray"], ["stray"]),
    Case("prune-required-missing", "pipelines.prune", P[1:], ["--teacher"]),
    Case("prune-empty-data-value", "pipelines.prune", ["--teacher={missing}.keras", "--data=", "--out_dir={out}"],
         ["--data=", "empty value"]),
    Case("prune-out-dir-is-a-file", "pipelines.prune", ["--teacher={missing}.keras", "--data={missing}",
                                                        "--out_dir={out}/saved_earlier.json"],
         ["--out_dir={out}/saved_earlier.json", "not a folder"]),
    Case("train-cloud-negative-seed", "pipelines.train_cloud", [*T, "--seed=-1"], ["--seed=-1"]),
    Case("train-cloud-epochs-zero", "pipelines.train_cloud", [*T, "--epochs=0"], ["--epochs=0"]),
    Case("train-cloud-lr-negative", "pipelines.train_cloud", [*T, "--learning_rate=-0.1"], ["--learning_rate=-0.1"]),
    Case("train-cloud-depth", "pipelines.train_cloud", [*T, "--depth=12"], ["--depth=12", "6n+4"]),
    Case("train-cloud-dropout", "pipelines.train_cloud", [*T, "--dropout=1.0"], ["--dropout=1.0"]),
    Case("train-cloud-cpu-devices", "pipelines.train_cloud", [*T, "--cpu_devices=0"], ["--cpu_devices=0"]),
    Case("export-batch-zero", "pipelines.export_tflite", [*E, "--batch_size=0"], ["--batch_size=0"]),
    Case("export-momentum", "pipelines.export_tflite", [*E, "--momentum=1.5"], ["--momentum=1.5"]),
    Case("export-trainable", "pipelines.export_tflite", [*E, "--trainable=last:0"], ["--trainable=last:0"]),
    Case("export-weight-decay-nan", "pipelines.export_tflite", [*E, "--weight_decay=nan"], ["--weight_decay=nan"]),
    Case("export-calibration-zero", "pipelines.export_tflite", [*E, "--calibration_size=0"], ["--calibration_size=0"]),
    Case("export-duplicate-class-names", "pipelines.export_tflite", [*E, "--class_names=a,b,a"], ["--class_names=a,b,a"]),
    Case("export-new-class-clash", "pipelines.export_tflite", [*E, "--class_names=a,b", "--new_classes=b,c"],
         ["--new_classes=b,c", "'b'"]),
    Case("convert-needs-data", "pipelines.convert", ["--model={missing}.keras"], ["--data", "--check_only"]),
    Case("convert-ratio", "pipelines.convert", ["--model={missing}.keras", "--data={missing}", "--out_dir={out}",
                                                 "--target_params_ratio=1.5"], ["--target_params_ratio=1.5"]),
    Case("convert-val-size", "pipelines.convert", ["--model={missing}.keras", "--data={missing}", "--out_dir={out}",
                                                   "--val_size=0"], ["--val_size=0"]),
    Case("transfer-temperature", "pipelines.transfer",
         ["--teacher={missing}.keras", "--student=wrn-10-1", *T, "--temperature=0"], ["--temperature=0.0"]),
    Case("transfer-all-weights-zero", "pipelines.transfer",
         ["--teacher={missing}.keras", "--student=wrn-10-1", *T, "--ce_weight=0", "--kd_weight=0", "--at_weight=0"],
         ["--ce_weight=0.0"]),
    Case("transfer-epochs", "pipelines.transfer", ["--teacher={missing}.keras", "--student=wrn-10-1", *T, "--epochs=-1"],
         ["--epochs=-1"]),
    Case("transfer-student-depth", "pipelines.transfer", ["--teacher={missing}.keras", "--student=wrn-12-1", *T],
         ["--student=wrn-12-1", "6n+4"]),
    Case("transfer-student-width-zero", "pipelines.transfer", ["--teacher={missing}.keras", "--student=WRN-16-0", *T],
         ["--student=WRN-16-0", "width"]),
    Case("sweep-budgets-not-numbers", "pipelines.sweep", [*P, "--budgets=0.5,half"], ["--budgets=0.5,half"]),
    Case("sweep-budget-one", "pipelines.sweep", [*P, "--budgets=0.5,1"], ["--budgets=0.5,1"]),
    Case("sweep-budgets-twice", "pipelines.sweep", [*P, "--budgets=0.5,0.5"], ["--budgets=0.5,0.5", "distinct"]),
    Case("prune-out-dir-name-too-long", "pipelines.prune",
         ["--teacher={missing}.keras", "--data={missing}", "--out_dir={out}/" + "a" * 300], ["--out_dir=", "300 bytes"]),
    Case("sweep-unknown-method", "pipelines.sweep", [*P, "--methods=default,magic"], ["--methods=default,magic"]),
    Case("run-all-threads", "pipelines.run_all", [*T, "--threads=0"], ["--threads=0"]),
    Case("run-all-device-python", "pipelines.run_all", [*T, "--device_python={missing}"], ["--device_python={missing}"]),
    Case("run-all-device-python-not-a-python", "pipelines.run_all", [*T, "--device_python=/bin/true"],
         ["--device_python=/bin/true", "does not run the device app"]),
    Case("experiments-device-python-not-a-python", "pipelines.experiments", [*T, "--device_python=/bin/echo"],
         ["--device_python=/bin/echo", "does not run the device app"]),
    Case("run-all-preset", "pipelines.run_all", [*T, "--preset=huge"], ["--preset=huge"]),
    Case("experiments-threads", "pipelines.experiments", [*T, "--threads=0"], ["--threads=0"]),
    Case("experiments-shard-without-only", "pipelines.experiments", [*T, "--shard=0/2"],
         ["--shard=0/2", "--only=never_seen"]),
    Case("experiments-shard-malformed", "pipelines.experiments", [*T, "--only=never_seen", "--shard=2/2"],
         ["--shard=2/2", "K/N"]),
    Case("experiments-shard-without-teacher", "pipelines.experiments", [*T, "--only=never_seen", "--shard=0/2"],
         ["--shard=0/2", "--teacher"]),
    Case("experiments-never-seen-preset-without-only", "pipelines.experiments", [*T, "--preset=never_seen"],
         ["--preset=never_seen", "--only=never_seen"]),
    Case("experiments-threads-huge", "pipelines.experiments", [*T, "--threads=100000"], ["--threads=100000", "1..1024"]),
    Case("run-all-threads-huge", "pipelines.run_all", [*T, "--threads=100000"], ["--threads=100000"]),
    Case("experiments-teacher-missing", "pipelines.experiments", [*T, "--teacher={missing}.keras"],
         ["--teacher={missing}.keras"]),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_cases(CASES, {}, tmp_path_factory.mktemp("flags"))


@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_bad_flag(results, case_id):
    check_case(results, case_id)


def test_flag_errors_come_before_tensorflow_loads(tmp_path):
    """A real process: one line, exit 2, and fast, because no model or data was touched."""
    result = run_pipeline_process("pipelines.prune", "--teacher=t.keras", "--data=d", f"--out_dir={tmp_path}",
                                  "--target_params_ratio=1.5")
    assert_user_error(result, "--target_params_ratio=1.5")
    assert not any(tmp_path.iterdir())


def test_sweep_budget_errors_come_before_tensorflow_loads(tmp_path):
    result = run_pipeline_process("pipelines.sweep", "--teacher=t.keras", "--data=d", f"--out_dir={tmp_path}",
                                  "--budgets=0.5,0.5")
    assert_user_error(result, "--budgets=0.5,0.5")
    assert result.stderr.strip().splitlines() == result.error_lines, result.stderr


def test_outputs_that_would_replace_inputs_are_refused(pipeline_inputs, tmp_path):
    """An output naming an input (the model, its metrics.json, the images, a file under an input
    folder, another spelling or a link of one) or an output folder where the binary would write
    over an input is refused before anything is written: nothing is lost."""
    import shutil

    import numpy as np

    from harness import run_pipelines, snapshot, write_npz

    folder = tmp_path / "teacher"
    shutil.copytree(os.path.dirname(pipeline_inputs["teacher"]), folder)
    model, metrics = str(folder / "model.keras"), str(folder / "metrics.json")
    images = write_npz(folder / "images.npz", images=np.zeros((4, 32, 32, 3), np.uint8))
    link = tmp_path / "link.keras"
    link.symlink_to(model)
    nested = tmp_path / "run" / "prune"
    nested.mkdir(parents=True)
    shutil.copy(model, nested / "pruned.keras")
    image_folder = tmp_path / "pictures"
    shutil.copytree(os.path.join(pipeline_inputs["tree"], "test"), image_folder)
    an_image = str(next(p for p in sorted(image_folder.rglob("*.png"))))
    before = snapshot(tmp_path)
    outs = [model, metrics, images, str(folder / "sub" / ".." / "model.keras"), str(link)]
    soft = [[f"--model={model}", f"--images={images}", f"--out={out}"] for out in outs]
    soft.append([f"--model={model}", f"--images={image_folder}", f"--out={an_image}"])
    for result, out in zip(run_pipelines("pipelines.soft_labels", soft), outs + [an_image]):
        assert_user_error(result, f"--out={out}", "an input of this run")
    cases = [("pipelines.export_tflite", [f"--model={model}", f"--out_dir={folder}"], "metrics.json"),
             ("pipelines.export_tflite", [f"--model={link}", f"--out_dir={folder}"], "metrics.json"),
             ("pipelines.prune", [f"--teacher={model}", f"--out_dir={folder}", "--data=d"], "metrics.json"),
             ("pipelines.convert", [f"--model={nested / 'pruned.keras'}", f"--out_dir={tmp_path / 'run'}", "--data=d"],
              "prune/pruned.keras")]
    for module, argv, name in cases:
        result, = run_pipelines(module, [argv])
        assert_user_error(result, argv[1], name, "another folder")
    assert snapshot(tmp_path) == before
    # Binaries that write nothing of that name there accept a model in their output folder: the
    # error is about the (missing) data, not the folder.
    for module in ("pipelines.sweep", "pipelines.experiments"):
        result, = run_pipelines(module, [[f"--teacher={model}", f"--out_dir={folder}", "--data=no_such_data"]])
        assert_user_error(result, "no_such_data")


def test_every_write_refuses_an_input_of_the_run(tmp_path):
    """Whatever path a write takes (a subfolder, a symbolic or a hard link), an input is never
    replaced."""
    from edgekt import atomic
    from edgekt.errors import UserError

    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "0.png").write_bytes(b"an image")
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "1.png").write_bytes(b"another image")
    (data / "dog").symlink_to(tmp_path / "dogs")  # a class folder that is a link, as readers follow them
    (data / "loop").symlink_to(data)  # a loop is walked once
    model = tmp_path / "model.keras"
    model.write_bytes(b"a model")
    (tmp_path / "hard.keras").hardlink_to(model)
    (tmp_path / "soft.keras").symlink_to(model)
    try:
        atomic.protect_inputs([("--model=model.keras", str(model)), ("--data=data", str(data))])
        for path in (model, tmp_path / "hard.keras", tmp_path / "soft.keras", data / "cat" / "0.png",
                     data / "dog" / "1.png", tmp_path / "sub" / ".." / "model.keras"):
            with pytest.raises(UserError, match="an input of this run"):
                atomic.write_bytes(path, b"output")
        atomic.write_bytes(tmp_path / "new.json", b"output")  # anything else is written
        atomic.write_bytes(tmp_path / ("n" * 250), b"output")  # a long name too: its temporary is shortened
        # A file named like a killed writer's temporary, but an input, is never cleaned away.
        stale = tmp_path / ".out.npz.999999999.abcdefgh.tmp"
        stale.write_bytes(b"an input")
        atomic.protect_inputs([("--data=stale", str(stale))])
        atomic.write_bytes(tmp_path / "out.npz", b"output")
        assert stale.read_bytes() == b"an input"
    finally:
        atomic.forget_inputs()
    assert model.read_bytes() == b"a model" and (data / "cat" / "0.png").read_bytes() == b"an image"


def test_export_without_data_writes_float16_and_says_so(pipeline_inputs, tmp_path):
    """The documented minimal form `export_tflite --model=M --out_dir=D`: no data to calibrate
    int8, so the float16 inference model is written, with a warning saying so."""
    import json

    from harness import run_pipelines

    out = tmp_path / "export"
    result, = run_pipelines("pipelines.export_tflite", [[f"--model={pipeline_inputs['teacher']}", f"--out_dir={out}"]])
    assert result.code == 0, result.stderr[-3000:]
    assert "float16" in result.stderr and "--data" in result.stderr
    assert (out / "model_float16.tflite").exists() and not (out / "model_int8.tflite").exists()
    assert json.loads((out / "metrics.json").read_text())["inference_quantization"] == "float16"


def test_help_exits_0_and_a_refused_run_creates_no_out_dir(tmp_path):
    """Asking for help is not an error; a run refused by its flags leaves no --out_dir behind."""
    result = run_pipeline_process("pipelines.prune", "--help")
    assert result.code == 0 and "--teacher" in result.stdout, result.stderr[-2000:]
    out = tmp_path / "not" / "yet"
    result = run_pipeline_process("pipelines.prune", "--teacher=t.keras", "--data=d", f"--out_dir={out}",
                                  "--target_params_ratio=1.5")
    assert_user_error(result, "--target_params_ratio=1.5")
    assert not (tmp_path / "not").exists()


def test_out_dir_where_files_cannot_be_created_is_refused_at_once():
    result = run_pipeline_process("pipelines.prune", "--teacher=t.keras", "--data=d", "--out_dir=/proc/edgekt_out")
    assert_user_error(result, "--out_dir=/proc/edgekt_out", "cannot be created")
