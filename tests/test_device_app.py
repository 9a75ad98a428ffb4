"""The device app (`python -m tflite_runtime_app`): no TensorFlow, CLI results, input checks,
checkpoint resume after SIGKILL, unseen-category learning from cloud soft labels."""

from __future__ import annotations

import glob
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from edgekt import data
from edgekt.export import TrainerOptions, export
from edgekt.transfer import soft_labels

from conftest import CIFAR10_ARCHIVE, REPO_ROOT, encode_png, quick_wrn

BATCH = 16


@pytest.fixture(scope="module")
def device_model(tmp_path_factory, cifar):
    """A WRN-10-1 trained for one short epoch on real images, exported for the device."""
    model = quick_wrn(cifar["train"], 2000, seed=1)
    out = tmp_path_factory.mktemp("device")
    export(model, str(out), class_names=cifar.class_names, options=TrainerOptions(batch_size=BATCH),
           quantization="float16")
    return str(out / "model_trainable.tflite"), model


@pytest.fixture(scope="module")
def new_data(tmp_path_factory, cifar):
    """200 labelled real training images as .npz."""
    sub = data.stratified_subset(cifar["train"], 200, seed=7)
    path = tmp_path_factory.mktemp("new") / "new.npz"
    np.savez(path, images=sub.images, labels=sub.labels)
    return str(path)


@pytest.fixture(scope="module")
def new_val_data(new_data):
    """The same images in another file: validation on the training images, where a test needs
    the first validation to equal an evaluation of the data (the app refuses the same path)."""
    path = os.path.join(os.path.dirname(new_data), "new_val.npz")
    shutil.copyfile(new_data, path)
    return path


def app(*args, python=sys.executable, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, **(env_extra or {})}
    code = ("import runpy, sys\n"
            f"sys.argv = ['tflite_runtime_app'] + {list(args)!r}\n"
            "try:\n    runpy.run_module('tflite_runtime_app', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'edgekt', 'tf_keras'})\n"
            "print('IMPORTED:' + ','.join(heavy), file=sys.stderr)\n"
            "sys.exit(code)\n")
    return subprocess.run([python, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def last_json(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "IMPORTED:\n" in proc.stderr or proc.stderr.rstrip().endswith("IMPORTED:"), "TensorFlow/Keras was imported"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_evaluate_prints_accuracy_json_without_tensorflow(device_model, cifar):
    model_path, keras_model = device_model
    result = last_json(app("evaluate", f"--model={model_path}", f"--data={CIFAR10_ARCHIVE}", "--quiet"))
    assert result["n_images"] == 5000 and set(result["per_class"]) == set(cifar.class_names)
    from edgekt import evaluation

    expected = evaluation.evaluate(keras_model, cifar["test"].images, cifar["test"].labels)["accuracy"]
    assert result["accuracy"] == pytest.approx(expected, abs=1e-4)


def test_info_and_predict(device_model, tmp_path, cifar):
    model_path, _ = device_model
    info = last_json(app("info", f"--model={model_path}", "--quiet"))
    assert info["batch_size"] == BATCH and set(info["signatures"]) == {"train", "distill", "infer", "get_weights",
                                                                        "set_weights"}
    img = tmp_path / "ship.png"
    img.write_bytes(encode_png(cifar["test"].images[-1]))
    pred = last_json(app("predict", f"--model={model_path}", f"--images={img}", "--top_k=2"))
    assert pred["n_images"] == 1 and len(pred["predictions"][0]["top"]) == 2


def _weights(checkpoint_path):
    with np.load(checkpoint_path) as z:
        return {k: z[k] for k in z.files if k.startswith("w/")}, json.loads(str(z["__state__"]))


def test_learn_killed_mid_checkpoint_resumes_to_the_same_result(device_model, new_data, tmp_path):
    model_path, _ = device_model
    common = [f"--model={model_path}", f"--data={new_data}", "--epochs=2", "--patience=5", "--checkpoint_every=3",
              "--quiet", "--lr=0.005"]
    reference = last_json(app("learn", *common, f"--checkpoint={tmp_path / 'ref.npz'}"))
    assert reference["steps"] == 2 * reference["steps_per_epoch"]

    ck = tmp_path / "killed.npz"
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "EDGEKT_APP_CHECKPOINT_WRITE_DELAY": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "tflite_runtime_app", "learn", *common, f"--checkpoint={ck}"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # Wait for the second checkpoint write to be in progress (the first one exists already).
    while time.time() < deadline and not (ck.exists() and glob.glob(str(tmp_path / ".killed.npz.*.tmp"))):
        time.sleep(0.05)
    assert glob.glob(str(tmp_path / ".killed.npz.*.tmp")), "no checkpoint write was caught in progress"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    weights, state = _weights(ck)  # the last complete checkpoint is intact
    assert 0 < state["global_step"] < reference["steps"]
    leftovers = glob.glob(str(tmp_path / ".killed.npz.*.tmp"))
    assert leftovers  # what the killed writer left behind...
    resumed = last_json(app("learn", *common, f"--checkpoint={ck}"))
    assert not any(os.path.exists(p) for p in leftovers)  # ...is removed by the next run
    assert resumed["steps"] == reference["steps"] and resumed["epochs"] == reference["epochs"]
    assert resumed["resumed_at_step"] == state["global_step"] and reference["resumed_at_step"] == 0
    ref_w, _ = _weights(tmp_path / "ref.npz")
    got_w, _ = _weights(ck)
    for k in ref_w:
        np.testing.assert_allclose(got_w[k], ref_w[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert [h["val"] for h in resumed["history"]] == [h["val"] for h in reference["history"]]


def test_corrupt_or_foreign_checkpoint_is_refused_and_kept(device_model, new_data, tmp_path):
    model_path, _ = device_model
    ck = tmp_path / "ck.npz"
    ck.write_bytes(b"not a checkpoint")
    proc = app("learn", f"--model={model_path}", f"--data={new_data}", f"--checkpoint={ck}", "--epochs=1")
    assert proc.returncode == 2 and "corrupt or unreadable checkpoint" in proc.stderr
    assert ck.read_bytes() == b"not a checkpoint"
    np.savez(ck, **{"w/other": np.zeros(3), "__state__": np.asarray("{}")})
    proc = app("learn", f"--model={model_path}", f"--data={new_data}", f"--checkpoint={ck}", "--epochs=1")
    assert proc.returncode == 2 and "belongs to another model" in proc.stderr


def test_bad_inputs_get_clear_errors(device_model, tmp_path, cifar):
    model_path, _ = device_model
    base = ["evaluate", f"--model={model_path}"]
    folder = tmp_path / "imgs"
    for cls, idx in (("cat", 3), ("ship", 8)):
        (folder / cls).mkdir(parents=True)
        for i, j in enumerate(np.flatnonzero(cifar["test"].labels == idx)[:3]):
            (folder / cls / f"{i}.png").write_bytes(encode_png(cifar["test"].images[j]))
    ok = last_json(app(*base, f"--data={folder}"))
    assert ok["n_images"] == 6
    (folder / "cat" / "notes.txt").write_text("hello")
    proc = app(*base, f"--data={folder}")
    assert proc.returncode == 2 and "cat/notes.txt: not a readable image file" in proc.stderr
    assert last_json(app(*base, f"--data={folder}", "--skip_bad_files"))["n_images"] == 6
    os.remove(folder / "cat" / "notes.txt")
    (folder / "unicorn").mkdir()
    (folder / "unicorn" / "0.png").write_bytes(encode_png(cifar["test"].images[0]))
    proc = app(*base, f"--data={folder}")
    assert proc.returncode == 2 and "['unicorn'] are not among the model's classes" in proc.stderr
    big = tmp_path / "big.npz"
    np.savez(big, images=np.zeros((2, 40, 40, 3), np.uint8), labels=np.array([0, 1]))
    proc = app(*base, f"--data={big}")
    assert proc.returncode == 2 and "images are 40x40 (HxW), the model takes 32x32; pass --resize" in proc.stderr
    assert last_json(app(*base, f"--data={big}", "--resize"))["n_images"] == 2
    nan = tmp_path / "nan.npz"
    bad = np.zeros((3, 32, 32, 3), np.float32)
    bad[1, 0, 0, 0] = np.nan
    np.savez(nan, images=bad, labels=np.array([0, 1, 2]))
    proc = app(*base, f"--data={nan}")
    assert proc.returncode == 2 and "1 images contain NaN or inf (first: index 1)" in proc.stderr
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    proc = app(*base, f"--data={empty}")
    assert proc.returncode == 2 and "class folder is empty" in proc.stderr
    labels_out = tmp_path / "labels.npz"
    np.savez(labels_out, images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.array([0, 12]))
    proc = app(*base, f"--data={labels_out}")
    assert proc.returncode == 2 and "label 12 (index 1) is outside the model's 10 classes" in proc.stderr


def test_learn_unseen_from_cloud_soft_labels_file_and_server(device_model, tmp_path, cifar):
    model_path, keras_model = device_model
    images = data.stratified_subset(cifar["train"], 100, seed=3).images
    soft_path = str(tmp_path / "soft.npz")
    soft_labels.write_soft_labels(keras_model, images, cifar.class_names, soft_path, temperature=4.0)
    result = last_json(app("learn-unseen", f"--model={model_path}", f"--soft_labels={soft_path}",
                           f"--checkpoint={tmp_path / 'u.npz'}", "--epochs=1", "--quiet"))
    assert result["steps"] == result["steps_per_epoch"] and result["temperature"] == 4.0
    assert result["initial_val"] == 1.0  # the device starts as the cloud model here: full agreement

    server = soft_labels.make_server(keras_model, cifar.class_names, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        body = io.BytesIO()
        np.savez(body, images=images[:5])
        url = f"http://127.0.0.1:{server.server_address[1]}/soft_labels?temperature=2"
        with urllib.request.urlopen(urllib.request.Request(url, data=body.getvalue(), method="POST")) as r:
            reply = np.load(io.BytesIO(r.read()))
            assert reply["soft_targets"].shape == (5, 10) and float(reply["temperature"]) == 2.0
            np.testing.assert_allclose(reply["soft_targets"].sum(axis=1), 1.0, rtol=1e-5)
        bad = io.BytesIO()
        np.savez(bad, images=np.zeros((1, 8, 8, 3), np.uint8))
        with pytest.raises(urllib.error.HTTPError, match="400"):
            urllib.request.urlopen(urllib.request.Request(url, data=bad.getvalue(), method="POST"))
    finally:
        server.shutdown()
        server.server_close()
    assert server.server_address[0] == "127.0.0.1"


def _tflite_runtime_python():
    python = os.environ.get("EDGEKT_TFLITE_RUNTIME_PYTHON",
                            os.path.join(REPO_ROOT, ".venv-tflite-runtime", "bin", "python"))
    if not os.path.exists(python):
        pytest.skip(f"no tflite-runtime venv at {python} (.ci/run creates it)")
    return python


def test_app_runs_under_tflite_runtime_214(device_model):
    model_path, _ = device_model
    python = _tflite_runtime_python()
    for runtime in ("auto", "tflite_runtime"):
        result = last_json(app("info", f"--model={model_path}", "--quiet", f"--runtime={runtime}", python=python))
        assert result["runtime"] == "tflite_runtime" and result["runtime_version"].startswith("2.14")
        # tflite-runtime 2.14 applies XNNPACK at allocation: the app must have allocated.
        assert result["kernels"]["subgraph"] == "distill" and result["kernels"]["delegated"] > 0
    proc = app("info", f"--model={model_path}", "--runtime=ai_edge_litert", python=python)
    assert proc.returncode == 2 and proc.stdout == ""
    line, = [l for l in proc.stderr.splitlines() if not l.startswith("IMPORTED:")]
    assert line.startswith("error: --runtime=ai_edge_litert: the ai-edge-litert package is not installed")


def test_runtime_flag_picks_the_interpreter_and_info_reports_its_kernels(device_model, new_data, tmp_path):
    model_path, _ = device_model
    info = last_json(app("info", f"--model={model_path}", "--quiet"))
    assert info["runtime"] == "ai_edge_litert" and info["runtime_version"] and info["threads"] == 1
    kernels = info["kernels"]
    assert kernels["subgraph"] == "distill" and 0 < kernels["delegated"] < kernels["ops"]
    assert kernels["partitions"] >= 1 and kernels["builtin"] and "DELEGATE" not in kernels["builtin"]
    explicit = last_json(app("info", f"--model={model_path}", "--quiet", "--runtime=ai_edge_litert"))
    assert explicit["kernels"] == kernels
    text = app("info", f"--model={model_path}")
    assert text.returncode == 0 and "ai_edge_litert " + info["runtime_version"] in text.stdout
    assert f"XNNPACK runs {kernels['delegated']} of {kernels['ops']} ops" in text.stdout
    # Every command's result names the interpreter that produced it.
    ev = last_json(app("evaluate", f"--model={model_path}", f"--data={new_data}", "--quiet",
                       "--runtime=ai_edge_litert"))
    assert ev["runtime"] == "ai_edge_litert" and ev["runtime_version"] == info["runtime_version"]
    # A runtime that is not installed, or not known, is one line and exit code 2; nothing is written.
    checkpoint = tmp_path / "ck.npz"
    for flag, message in (("--runtime=tflite_runtime", "error: --runtime=tflite_runtime: the tflite-runtime "
                                                       "package is not installed in this Python; install it"),
                          ("--runtime=tensorflow", "error: --runtime=tensorflow: not one of auto, ai_edge_litert, tflite_runtime")):
        proc = app("learn", f"--model={model_path}", f"--data={new_data}", f"--checkpoint={checkpoint}", flag)
        if flag == "--runtime=tflite_runtime" and not proc.returncode:
            pytest.skip("tflite_runtime is installed in this Python")
        lines = [l for l in proc.stderr.splitlines() if not l.startswith("IMPORTED:")]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), proc.stderr
        assert not checkpoint.exists()


def test_evaluate_groups_and_learn_unseen_with_labelled_validation(device_model, new_data, tmp_path, cifar):
    model_path, keras_model = device_model
    groups = "pets=cat,dog;vehicles=automobile,truck"
    result = last_json(app("evaluate", f"--model={model_path}", f"--data={new_data}", f"--groups={groups}"))
    assert result["pets_images"] == 40 and 0 <= result["pets_recall"] <= 1
    assert len(result["confusion"]) == 10 and sum(map(sum, result["confusion"])) == 200
    for bad, why in (("pets=cat,unicorn", "classes ['unicorn'] are not the model's"),
                     ("pets", "expected name=class,class;name=class")):
        proc = app("evaluate", f"--model={model_path}", f"--data={new_data}", f"--groups={bad}")
        assert proc.returncode == 2 and why in proc.stderr and "Traceback" not in proc.stderr
    images = data.stratified_subset(cifar["train"], 60, seed=4).images
    soft_path = str(tmp_path / "soft.npz")
    soft_labels.write_soft_labels(keras_model, images, cifar.class_names, soft_path, temperature=2.0)
    result = last_json(app("learn-unseen", f"--model={model_path}", f"--soft_labels={soft_path}",
                           f"--val_data={new_data}", f"--checkpoint={tmp_path / 'v.npz'}", "--epochs=1"))
    # Validation is the labelled file's accuracy, not agreement on a split of the soft labels.
    assert result["val_images"] == 200 and result["train_images"] == 60
    before = last_json(app("evaluate", f"--model={model_path}", f"--data={new_data}"))
    assert result["initial_val"] == pytest.approx(before["accuracy"])


def test_val_groups_score_is_the_mean_of_group_accuracies(device_model, new_data, new_val_data, tmp_path):
    model_path, _ = device_model
    groups = "animals=bird,cat,deer,dog,frog,horse;vehicles=airplane,automobile,ship,truck"
    measured = last_json(app("evaluate", f"--model={model_path}", f"--data={new_data}", f"--groups={groups}"))
    result = last_json(app("learn", f"--model={model_path}", f"--data={new_data}", f"--val_data={new_val_data}",
                           f"--val_groups={groups}", f"--checkpoint={tmp_path / 'g.npz'}", "--epochs=1"))
    expected = (measured["animals_recall"] + measured["vehicles_recall"]) / 2
    assert result["initial_val"] == pytest.approx(expected, abs=1e-9)
    assert measured["animals_images"] == 120  # 6 of the 10 classes of 200 balanced images: not a pooled mean
    proc = app("learn", f"--model={model_path}", f"--data={new_data}", "--val_groups=animals=unicorn",
               f"--checkpoint={tmp_path / 'h.npz'}", "--epochs=1")
    assert proc.returncode == 2 and "classes ['unicorn'] are not the model's" in proc.stderr


def test_imprinting_new_classes_through_the_cli(device_model, new_data, new_val_data, tmp_path, cifar):
    """A model exported with 6 classes and 4 added ones: `learn` imprints the added classes
    found in its data (and only once), the features output is the classifier's input, and the
    imprinted start is what the first validation measures."""
    import keras

    from edgekt.models import heads as model_heads
    from tflite_runtime_app.runner import DeviceModel

    _, keras_model = device_model
    names = list(cifar.class_names)
    six = model_heads.select_outputs(keras_model, list(range(6)))
    out = tmp_path / "grown"
    export(six, str(out), class_names=names[:6], new_class_names=names[6:], options=TrainerOptions(batch_size=BATCH),
           quantization="float16")
    model_path = str(out / "model_trainable.tflite")
    device = DeviceModel(model_path)
    images = np.load(new_data)["images"][:BATCH + 3]
    dense = [layer for layer in six.layers if isinstance(layer, keras.layers.Dense)][-1]
    assert device.meta["classifier_weights"]["kernel"].startswith(dense.name)
    classifier_input = keras.Model(six.input, dense.input)
    np.testing.assert_allclose(device.features(images), classifier_input.predict(images, verbose=0), rtol=1e-4,
                               atol=1e-4)

    plain = last_json(app("learn", f"--model={model_path}", f"--data={new_data}", f"--val_data={new_val_data}",
                          f"--checkpoint={tmp_path / 'plain.npz'}", "--epochs=1", "--head_init=none"))
    imprinted = last_json(app("learn", f"--model={model_path}", f"--data={new_data}", f"--val_data={new_val_data}",
                              f"--checkpoint={tmp_path / 'imp.npz'}", "--epochs=1"))
    assert plain["prepared"] is None and imprinted["prepared"]["imprinted"] == names[6:]
    assert imprinted["prepared"]["images"] == 80  # 20 images of each added class
    assert imprinted["learned_classes"] == names
    before = last_json(app("evaluate", f"--model={model_path}", f"--data={new_data}"))
    assert plain["initial_val"] == pytest.approx(before["accuracy"])
    assert imprinted["initial_val"] != plain["initial_val"]  # the first validation sees the imprinted start
    # Near-zero rows hardly ever win; imprinted ones win on many of their own images.
    from tflite_runtime_app import heads as device_heads

    new = np.load(new_data)
    added = new["labels"] >= 6
    recall_before = float((device.logits(new["images"][added]).argmax(1) == new["labels"][added]).mean())
    device_heads.imprint_unlearned(device, new["images"], new["labels"], names[:6])
    recall_after = float((device.logits(new["images"][added]).argmax(1) == new["labels"][added]).mean())
    assert recall_before < 0.1 < recall_after
    # Starting from the imprinted run, every class is learned: nothing is imprinted again.
    again = last_json(app("learn", f"--model={model_path}", f"--data={new_data}", f"--val_data={new_val_data}",
                          f"--init={tmp_path / 'imp.npz'}", f"--checkpoint={tmp_path / 'again.npz'}", "--epochs=1"))
    assert again["prepared"] == {"imprinted": [], "images": 0}
