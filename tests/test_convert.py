"""`pipelines.convert`: user-style Keras models (not WRN) to device models, or a clear list of
what is unsupported; and the run_all workflow's caching."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from edgekt import compatibility, data

from conftest import REPO_ROOT, write_tree
from prune_models import mobilenet_style, resnet_style, vgg_style


def _run(module, args, timeout=900):
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _trained_user_model(builder, splits, epochs: int, path: str, batch_size: int = 32) -> str:
    """A user-style model for the data's classes trained briefly on the real images, saved to `path`."""
    keras.utils.set_random_seed(0)
    model = builder(num_classes=len(splits["train"].class_names))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(splits["train"].images.astype(np.float32), splits["train"].labels, epochs=epochs,
              batch_size=batch_size, verbose=0)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def user_data(tmp_path_factory, cifar):
    """A user's image folder: 3 classes, 120 train and 30 test images each (real CIFAR-10)."""
    splits = {}
    for name, split, per in (("train", cifar["train"], 120), ("test", cifar["test"], 30)):
        sub = data.select_classes(split, ["cat", "dog", "truck"], relabel=True)
        idx = np.concatenate([np.flatnonzero(sub.labels == c)[:per] for c in range(3)])
        splits[name] = data.Split(sub.images[idx], sub.labels[idx], sub.class_names)
    root = tmp_path_factory.mktemp("user")
    return write_tree(str(root), splits, ("cat", "dog", "truck"), per_class=120, wrapper="pets"), splits


@pytest.fixture(scope="module")
def user_data_64(tmp_path_factory, cifar):
    """Another user's folder: 4 classes of 64x64 images (real CIFAR-10 images upscaled 2x), 100
    train, 15 val (its own validation folder, not trained on) and 25 test images each."""
    classes = ("bird", "cat", "ship", "truck")
    splits = {}
    for name, split, skip, per in (("train", cifar["train"], 0, 100), ("val", cifar["train"], 100, 15),
                                   ("test", cifar["test"], 0, 25)):
        sub = data.select_classes(split, list(classes), relabel=True)
        idx = np.concatenate([np.flatnonzero(sub.labels == c)[skip:skip + per] for c in range(len(classes))])
        images = np.repeat(np.repeat(sub.images[idx], 2, axis=1), 2, axis=2)
        splits[name] = data.Split(images, sub.labels[idx], sub.class_names)
    root = tmp_path_factory.mktemp("user64")
    return write_tree(str(root), splits, classes, per_class=100, wrapper="photos"), splits


@pytest.mark.parametrize("builder,dataset", [(mobilenet_style, "user_data"), (resnet_style, "user_data_64")],
                         ids=["mobilenet_style_32px_3_classes", "resnet_style_64px_4_classes"])
def test_default_convert_keeps_the_floor_input_size_and_classes(builder, dataset, request, tmp_path):
    """The default policy on a depthwise model and on a residual model with 64x64 inputs and
    4 classes: validation accuracy within the floor, the input size and classes kept, and the
    exported trainable model agreeing with the Keras model image by image."""
    folder, splits = request.getfixturevalue(dataset)
    path = _trained_user_model(builder, splits, epochs=30, path=str(tmp_path / "user.keras"), batch_size=16)
    out = tmp_path / "out"
    proc = _run("pipelines.convert", [f"--model={path}", f"--data={folder}", f"--out_dir={out}", "--val_size=60",
                                      "--batch_size=8", "--budget_minutes=3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    p, e = m["prune"], m["export"]
    assert p["val_accuracy"] >= p["accuracy_floor"] - 1e-9
    assert p["accuracy_floor"] == pytest.approx(p["teacher_val_accuracy"] - 0.01)
    assert p["teacher_val_accuracy"] > 1 / len(splits["train"].class_names) + 0.1  # a model that learned something
    # Either filters were removed within the floor, or none could be and the original is kept, and says so.
    assert (p["params"] < p["teacher_params"]) != p["unpruned"]
    assert ("the device model is the original, unpruned" in m["summary"]) == p["unpruned"]
    size = splits["train"].images.shape[1]
    meta = json.loads((out / "export" / "model_meta.json").read_text())
    assert meta["input"]["shape"][-3:] == [size, size, 3]
    assert meta["class_names"] == list(splits["train"].class_names) and meta["num_classes"] == len(meta["class_names"])
    pruned = keras.models.load_model(out / "prune" / "pruned.keras")
    assert tuple(pruned.input_shape[1:]) == (size, size, 3) and pruned.output_shape[-1] == len(meta["class_names"])
    assert e["trainable_keras_top1_agreement"] >= 0.99 and e["trainable_keras_max_logit_diff"] < 1e-3
    assert e["trainable_test_accuracy"] == pytest.approx(p["test_accuracy"], abs=1.5 / len(splits["test"].labels))
    assert m["summary"] in proc.stdout
    if "val" in splits:  # the data's own validation folder sets the floor
        assert m["validation"] == "the data's val/ folder (60 images)" and "val/ folder" in m["summary"]
    else:
        assert m["validation"] == "60 images held out of train/"


@pytest.mark.parametrize("builder", [vgg_style, mobilenet_style], ids=["vgg_style", "mobilenet_style"])
def test_convert_user_models(builder, user_data, tmp_path):
    folder, splits = user_data
    path = _trained_user_model(builder, splits, epochs=2, path=str(tmp_path / "user.keras"))
    out = tmp_path / "out"
    proc = _run("pipelines.convert", [f"--model={path}", f"--data={folder}", f"--out_dir={out}", "--preset=smoke",
                                      "--val_size=30", "--batch_size=8", "--target_params_ratio=0.5"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "convert.json").read_text())
    assert summary["prune"]["params"] <= 0.5 * summary["prune"]["teacher_params"] * 1.0001
    meta = json.loads((out / "export" / "model_meta.json").read_text())
    assert meta["class_names"] == ["cat", "dog", "truck"] and meta["batch_size"] == 8
    assert (out / "export" / "model_trainable.tflite").exists() and (out / "export" / "model_int8.tflite").exists()
    assert summary["export"]["trainable_test_accuracy"] is not None
    # One summary line (printed, and in metrics.json) with both models' accuracies, sizes, latency
    # and the policy; the smoke preset says it is a demonstration.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"] in proc.stdout and metrics == summary
    for key in ("val_accuracy", "teacher_val_accuracy", "test_accuracy", "teacher_test_accuracy", "flops",
                "teacher_flops", "file_bytes", "latency_ms_batch1", "teacher_latency_ms_batch1"):
        assert summary["prune"][key] is not None, key
    assert "val top-1" in metrics["summary"] and "keep 0.5 of the parameters, no accuracy floor" in metrics["summary"]
    assert "quick demonstration" in metrics["summary"] and "--max_accuracy_drop=1" in metrics["summary"]


def test_default_convert_keeps_validation_accuracy_within_the_floor(user_data, tmp_path):
    folder, splits = user_data
    path = _trained_user_model(vgg_style, splits, epochs=3, path=str(tmp_path / "user.keras"))
    out = tmp_path / "out"
    proc = _run("pipelines.convert", [f"--model={path}", f"--data={folder}", f"--out_dir={out}", "--val_size=60",
                                      "--batch_size=8", "--budget_minutes=4"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    p = m["prune"]
    assert p["accuracy_floor"] == pytest.approx(p["teacher_val_accuracy"] - 0.01)
    assert p["val_accuracy"] >= p["accuracy_floor"] - 1e-9 and p["params"] < p["teacher_params"]
    assert m["preset"] == "auto" and m["config"]["target_params_ratio"] is None
    assert "floor" in m["summary"] and "sized to the data" in m["summary"] and "within 4 min" in m["summary"]
    assert m["summary"] in proc.stdout


def test_auto_policy_sizes_fine_tuning_to_the_data_and_stops_at_the_time_budget():
    from edgekt.convert_user import auto_config
    from edgekt.prune.pruner import _over_time_budget

    small, large = auto_config(600), auto_config(45000)
    assert (small.step_epochs, small.final_epochs) == (8, 40) and (large.step_epochs, large.final_epochs) == (1, 3)
    assert small.max_accuracy_drop == 1.0 and small.target_params_ratio is None and small.budget_seconds == 1800
    assert auto_config(600, target_params_ratio=0.3).target_params_ratio == 0.3
    log = [{"step": 0, "seconds": 0.0}, {"step": 1, "seconds": 100.0}]
    cfg = auto_config(45000, budget_minutes=10)  # 1 epoch per step, 3 final: 100 + 100 + 300 s <= 600 s
    assert _over_time_budget(log, cfg) == ""
    assert "time budget of 8.0 min" in _over_time_budget(log, auto_config(45000, budget_minutes=8))
    assert _over_time_budget(log, auto_config(45000, budget_minutes=None)) == ""


def test_convert_lists_every_unsupported_layer(tmp_path):
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2DTranspose(4, 3, name="upsample")(inp)
    x = keras.layers.LayerNormalization(name="layer_norm")(x)
    out = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    found = compatibility.problems(model)
    assert len(found) == 2 and "'upsample' (Conv2DTranspose)" in found[0] and "'layer_norm'" in found[1]
    path = str(tmp_path / "bad.keras")
    model.save(path)
    proc = _run("pipelines.convert", [f"--model={path}", "--check_only"])
    assert proc.returncode == 2
    assert "'upsample' (Conv2DTranspose)" in proc.stderr and "'layer_norm' (LayerNormalization)" in proc.stderr


def test_supported_model_passes_the_check():
    assert compatibility.problems(vgg_style()) == []


def test_workflow_manifest_reuses_unchanged_stages(tmp_path):
    from edgekt.workflow import Manifest

    calls = []
    out = tmp_path / "stage_out.txt"

    def stage():
        calls.append(1)
        out.write_text("done")
        return {"value": len(calls)}

    manifest = Manifest(str(tmp_path))
    assert manifest.run("s", {"a": 1}, [str(out)], stage) == {"value": 1}
    assert Manifest(str(tmp_path)).run("s", {"a": 1}, [str(out)], stage) == {"value": 1}  # cached, from disk
    assert len(calls) == 1
    assert Manifest(str(tmp_path)).run("s", {"a": 2}, [str(out)], stage) == {"value": 2}  # inputs changed
    os.remove(out)
    assert Manifest(str(tmp_path)).run("s", {"a": 2}, [str(out)], stage) == {"value": 3}  # output missing
    out.write_text("another run's file")  # an output that is not the one the stage wrote
    assert Manifest(str(tmp_path)).run("s", {"a": 2}, [str(out)], stage) == {"value": 4}
    assert Manifest(str(tmp_path)).run("s", {"a": 2}, [str(out)], stage) == {"value": 4}  # as written: cached
    os.remove(out)
    os.mkdir(out)  # a folder where the stage writes a file is not its output
    with pytest.raises(Exception):
        Manifest(str(tmp_path)).run("s", {"a": 2}, [str(out)], stage)
    assert len(calls) == 5


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"cloud": 3}'])
def test_a_corrupt_run_all_manifest_is_one_line(tmp_path, text):
    from edgekt.errors import UserError
    from edgekt.workflow import MANIFEST, Manifest

    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(UserError, match=r"manifest.json: .*; remove it .* or pass another --out_dir"):
        Manifest(str(tmp_path))
