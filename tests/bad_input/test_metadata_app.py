"""Bad model_meta.json for the device app: missing, not JSON, wrong types, and fields that
disagree with the model (classes, batch size, input shape, weight names). Refused when the
model loads, with one line naming the metadata file and the field, exit 2, nothing changed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from harness import (assert_user_error, copy_device_model, real_images, run_app, run_app_process, snapshot,
                     write_npz)

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _edit(**changes):
    def apply(meta):
        for key, value in changes.items():
            if value is _DELETE:
                meta.pop(key, None)
            else:
                meta[key] = value
        return meta
    return apply


_DELETE = object()


def _set_input_shape(shape):
    def apply(meta):
        meta["input"]["shape"] = shape
        return meta
    return apply


def _drop_weight(meta):
    meta["weight_names"] = meta["weight_names"][1:]
    return meta


def _extra_weight(meta):
    meta["weight_names"] = meta["weight_names"] + ["head__extra"]
    return meta


CASES = [
    # (id, change to the parsed metadata, names in the error)
    ("eleven classes", _edit(class_names=CIFAR + ["unicorn"], num_classes=11), ["model_meta.json", "11", "10"]),
    ("nine classes", _edit(class_names=CIFAR[:9], num_classes=9), ["model_meta.json", "9", "10"]),
    ("duplicated class", _edit(class_names=CIFAR[:9] + ["cat"]), ["model_meta.json", "class_names", "cat"]),
    ("class names not strings", _edit(class_names=list(range(10))), ["model_meta.json", "class_names"]),
    ("class names empty", _edit(class_names=[]), ["model_meta.json", "class_names"]),
    ("class names a string", _edit(class_names="airplane,cat"), ["model_meta.json", "class_names"]),
    ("num_classes disagrees", _edit(num_classes=12), ["model_meta.json", "num_classes", "12"]),
    ("batch size differs", _edit(batch_size=16), ["model_meta.json", "batch_size", "16", "8"]),
    ("batch size a string", _edit(batch_size="8"), ["model_meta.json", "batch_size"]),
    ("batch size zero", _edit(batch_size=0), ["model_meta.json", "batch_size"]),
    ("input shape differs", _set_input_shape([64, 64, 3]), ["model_meta.json", "64", "32"]),
    ("input one channel", _set_input_shape([32, 32, 1]), ["model_meta.json", "channels"]),
    ("input shape too short", _set_input_shape([32, 32]), ["model_meta.json", "input.shape"]),
    ("input not an object", _edit(input=[32, 32, 3]), ["model_meta.json", "input.shape"]),
    ("weight name missing", _drop_weight, ["model_meta.json", "weight_names"]),
    ("weight name extra", _extra_weight, ["model_meta.json", "weight_names", "head__extra"]),
    ("weight names not a list", _edit(weight_names="all"), ["model_meta.json", "weight_names"]),
    ("no class_names", _edit(class_names=_DELETE), ["model_meta.json", "class_names"]),
    ("no batch_size", _edit(batch_size=_DELETE), ["model_meta.json", "batch_size"]),
    ("signature version", _edit(signature_version=2), ["model_meta.json", "signature_version", "2"]),
    ("signature version a boolean", _edit(signature_version=True), ["model_meta.json", "signature_version", "true"]),
    ("signature version a float", _edit(signature_version=1.0), ["model_meta.json", "signature_version", "1.0"]),
    ("new classes unknown", _edit(new_class_names=["unicorn"]), ["model_meta.json", "new_class_names", "unicorn"]),
    ("classifier weights unknown", _edit(classifier_weights={"kernel": "head__w"}),
     ["model_meta.json", "classifier_weights", "head__w"]),
    ("classifier weights a conv kernel", _edit(classifier_weights={"kernel": "stem_conv__kernel",
                                                                   "bias": "logits__bias"}),
     ["model_meta.json", "classifier_weights", "stem_conv__kernel", "[features, 10]"]),
    ("inference model not a string", _edit(inference_model=5), ["model_meta.json", "inference_model"]),
    ("options not an object", _edit(options=[1, 2]), ["model_meta.json", "options"]),
    ("inference model a path out of the folder", _edit(inference_model="../../../../etc/shadow"),
     ["model_meta.json", "inference_model", "../../../../etc/shadow"]),
]

RAW_CASES = [
    # (id, bytes of model_meta.json, names in the error)
    ("truncated JSON", None, ["model_meta.json", "not valid JSON"]),
    ("empty file", b"", ["model_meta.json", "not valid JSON"]),
    ("a JSON list", b"[1, 2, 3]", ["model_meta.json", "list"]),
    ("not UTF-8", b'{"class_names": ["\xff\xfe"]}', ["model_meta.json", "UTF-8"]),
    ("NaN batch size", b'{"class_names": ["a"], "batch_size": NaN, "input": {"shape": [32, 32, 3]}, '
                       b'"weight_names": [], "signature_version": 1}', ["model_meta.json", "batch_size"]),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory, cifar):
    images, labels = real_images(cifar, 10)
    folder = tmp_path_factory.mktemp("data")
    return write_npz(folder / "data.npz", images=images, labels=labels), write_npz(folder / "images.npz", images=images)


def _run(command, model, data):
    labelled, unlabelled = data
    extra = {"info": [], "evaluate": [f"--data={labelled}"], "predict": [f"--images={unlabelled}"]}[command]
    return run_app(command, f"--model={model}", *extra)


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("change,names", [(c, n) for _, c, n in CASES], ids=[c[0] for c in CASES])
def test_metadata_that_disagrees_or_has_wrong_types(device_export, tmp_path, data, command, change, names):
    model = copy_device_model(device_export, tmp_path)
    meta_path = os.path.join(os.path.dirname(model), "model_meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    with open(meta_path, "w") as f:
        json.dump(change(meta), f)
    before = snapshot(os.path.dirname(model), *data)
    assert_user_error(_run(command, model, data), *names)
    assert snapshot(os.path.dirname(model), *data) == before


@pytest.mark.parametrize("raw,names", [(r, n) for _, r, n in RAW_CASES], ids=[c[0] for c in RAW_CASES])
def test_malformed_metadata_file(device_export, tmp_path, data, raw, names):
    model = copy_device_model(device_export, tmp_path)
    meta_path = os.path.join(os.path.dirname(model), "model_meta.json")
    if raw is None:
        with open(meta_path, "rb") as f:
            raw = f.read()[:200]
    with open(meta_path, "wb") as f:
        f.write(raw)
    before = snapshot(os.path.dirname(model))
    assert_user_error(_run("info", model, data), *names)
    assert snapshot(os.path.dirname(model)) == before


def test_missing_metadata_and_a_folder_as_metadata(device_export, tmp_path, data):
    model = copy_device_model(device_export, tmp_path)
    os.remove(os.path.join(os.path.dirname(model), "model_meta.json"))
    before = snapshot(os.path.dirname(model))
    assert_user_error(_run("info", model, data), "model_meta.json", "not found", "--meta")
    assert_user_error(run_app("info", f"--model={model}", f"--meta={tmp_path}"), str(tmp_path), "folder")
    assert_user_error(run_app("info", f"--model={model}", f"--meta={tmp_path / 'typo.json'}"), "typo.json")
    assert snapshot(os.path.dirname(model)) == before


def test_metadata_given_with_meta_flag_is_checked_too(device_export, tmp_path, data):
    model = copy_device_model(device_export, tmp_path)
    with open(os.path.join(os.path.dirname(model), "model_meta.json")) as f:
        meta = json.load(f)
    meta["class_names"] = CIFAR + ["unicorn"]
    other = tmp_path / "other_meta.json"
    other.write_text(json.dumps(meta))
    assert_user_error(run_app("evaluate", f"--model={model}", f"--meta={other}", f"--data={data[0]}"),
                      "other_meta.json", "11", "10")


def test_a_real_process_gets_one_line_and_exit_2(device_export, tmp_path, data):
    model = copy_device_model(device_export, tmp_path)
    meta_path = os.path.join(os.path.dirname(model), "model_meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["class_names"] = CIFAR + ["unicorn"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    before = snapshot(os.path.dirname(model))
    assert_user_error(run_app_process("predict", f"--model={model}", f"--images={data[1]}"),
                      "model_meta.json", "11", "10")
    assert snapshot(os.path.dirname(model)) == before


def test_a_metadata_file_too_large_to_be_one_is_refused_unread(device_export, tmp_path, data):
    model = copy_device_model(device_export, tmp_path)
    meta_path = os.path.join(os.path.dirname(model), "model_meta.json")
    with open(meta_path, "r+b") as f:  # sparse: 8 GiB on paper, nothing on disk
        f.truncate(8 << 30)
    assert_user_error(_run("info", model, data), "model_meta.json", "bytes")


def test_every_class_new_evaluates_without_warnings(device_export, tmp_path, data):
    """Metadata calling every class new leaves the learned group empty: its figures are null."""
    model = copy_device_model(device_export, tmp_path)
    meta_path = os.path.join(os.path.dirname(model), "model_meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["new_class_names"] = list(meta["class_names"])
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    result = run_app_process("evaluate", f"--model={model}", f"--data={data[0]}", "--quiet")
    assert result.code == 0 and result.stderr.strip() == "", result.stderr[-2000:]


def test_a_real_process_prints_only_the_error_line(device_export, tmp_path, data):
    """Nothing else on stderr: not the runtime's notice that it created its delegate (which it
    prints when the model first runs), not a warning."""
    model = copy_device_model(device_export, tmp_path)
    scaled = write_npz(tmp_path / "scaled.npz", images=np.full((4, 32, 32, 3), 0.5, np.float32))
    result = run_app_process("predict", f"--model={model}", f"--images={scaled}")
    assert_user_error(result, "scaled.npz", "scaled")
    assert result.stderr.strip().splitlines() == result.error_lines, result.stderr
    result = run_app_process("evaluate", f"--model={model}", f"--data={data[0]}", "--quiet")
    assert result.code == 0 and result.stderr.strip() == "", result.stderr[-2000:]

