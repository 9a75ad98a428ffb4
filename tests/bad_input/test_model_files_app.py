"""Bad model files for the device app: missing, a folder, empty, not a flatbuffer, truncated,
a model without the training signatures, unreadable. One line naming the file, exit 2,
nothing saved changed."""

from __future__ import annotations

import builtins
import errno
import os
import shutil

import pytest

from harness import assert_user_error, copy_device_model, real_images, run_app, run_app_process, snapshot, write_npz


def _missing(model):
    os.remove(model)


def _folder(model):
    os.remove(model)
    os.mkdir(model)


def _empty(model):
    open(model, "wb").close()


def _random_bytes(model):
    with open(model, "wb") as f:
        f.write(os.urandom(4096))


def _text(model):
    with open(model, "w") as f:
        f.write("this is not a model\n")


def _truncated(model):
    with open(model, "rb") as f:
        blob = f.read()
    with open(model, "wb") as f:
        f.write(blob[: len(blob) // 3])


def _corrupt_body(model):
    with open(model, "rb") as f:
        blob = bytearray(f.read())
    blob[8:4096] = bytes(4088)  # keeps the TFL3 identifier, breaks the tables
    with open(model, "wb") as f:
        f.write(bytes(blob))


def _inference_model(model):
    # The float16 inference model exported beside it: a valid model without training signatures.
    shutil.copyfile(os.path.join(os.path.dirname(model), "model_float16.tflite"), model)


def _nan_in_weights(model):
    # A NaN written over one value of the exported classifier kernel, inside the file itself.
    import numpy as np

    from tflite_runtime_app.runner import DeviceModel

    kernel = np.ascontiguousarray(DeviceModel(model).get_weights()["logits__kernel"], np.float32).tobytes()
    with open(model, "rb") as f:
        blob = bytearray(f.read())
    at = blob.find(kernel)
    assert at > 0 and blob.find(kernel, at + 1) < 0
    blob[at:at + 4] = np.float32(np.nan).tobytes()
    with open(model, "wb") as f:
        f.write(bytes(blob))


CASES = [
    # (id, how to break model_trainable.tflite, names in the error)
    ("missing", _missing, ["model_trainable.tflite", "not found"]),
    ("a folder", _folder, ["model_trainable.tflite", "folder"]),
    ("empty", _empty, ["model_trainable.tflite", "empty"]),
    ("random bytes", _random_bytes, ["model_trainable.tflite", "not a TFLite model"]),
    ("text", _text, ["model_trainable.tflite", "not a TFLite model"]),
    ("truncated", _truncated, ["model_trainable.tflite"]),
    ("corrupt tables", _corrupt_body, ["model_trainable.tflite"]),
    ("inference model", _inference_model, ["model_trainable.tflite", "signatures"]),
    ("NaN in its weights", _nan_in_weights, ["model_trainable.tflite", "logits__kernel", "NaN or inf"]),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory, cifar):
    images, labels = real_images(cifar, 8)
    return write_npz(tmp_path_factory.mktemp("data") / "data.npz", images=images, labels=labels)


@pytest.mark.parametrize("command", ["info", "evaluate"])
@pytest.mark.parametrize("breaker,names", [(b, n) for _, b, n in CASES], ids=[c[0] for c in CASES])
def test_bad_model_file(device_export, tmp_path, data, command, breaker, names):
    model = copy_device_model(device_export, tmp_path)
    breaker(model)
    before = snapshot(os.path.dirname(model), data)
    args = [command, f"--model={model}"] + ([f"--data={data}"] if command == "evaluate" else [])
    assert_user_error(run_app(*args), *names)
    assert snapshot(os.path.dirname(model), data) == before


def test_folder_given_as_model_points_at_the_file_inside(device_export):
    line = assert_user_error(run_app("info", f"--model={device_export[0]}"), device_export[0])
    assert "model_trainable.tflite" in line.rsplit("; ", 1)[1]


def test_unreadable_model_file(device_export, tmp_path, monkeypatch):
    """A model the user may not read (simulated: the tests may run as root, which reads anything)."""
    model = copy_device_model(device_export, tmp_path)
    real_open = builtins.open

    def deny(file, *args, **kwargs):
        if os.fspath(file) == model:
            raise PermissionError(errno.EACCES, "Permission denied", model)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    line = assert_user_error(run_app("info", f"--model={model}"), model, "permission denied")
    assert "check the permissions" in line


def test_unicode_model_path_is_named(device_export, tmp_path):
    folder = tmp_path / "modèle_日本"
    shutil.copytree(device_export[0], folder)
    model = folder / "model_trainable.tflite"
    _random_bytes(str(model))
    before = snapshot(folder)
    assert_user_error(run_app("info", f"--model={model}"), str(model))
    assert snapshot(folder) == before


def test_a_real_process_gets_one_line_and_exit_2(device_export, tmp_path):
    model = copy_device_model(device_export, tmp_path)
    _inference_model(model)
    before = snapshot(os.path.dirname(model))
    assert_user_error(run_app_process("info", f"--model={model}"), "model_trainable.tflite", "signatures")
    assert snapshot(os.path.dirname(model)) == before
