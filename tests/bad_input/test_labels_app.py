"""Bad labels and soft labels for the device app: fractional, NaN, out-of-range, one-hot or
mistyped labels; soft labels that are not probabilities, a bad temperature, bad class names;
too few images to learn from. One line naming the file, exit 2, nothing saved changed; and
the final JSON of a run is always valid JSON."""

from __future__ import annotations

import numpy as np
import pytest

from harness import (app_json, assert_user_error, device_model_path, real_images, run_app, run_app_process, snapshot,
                     write_npz)

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def pictures(cifar):
    return real_images(cifar, 12)


def _with(i, value, dtype=None):
    def make(labels):
        out = labels.astype(dtype or labels.dtype)
        out[i] = value
        return out
    return make


LABEL_CASES = [
    # (id, labels from the true int labels, names in the error besides the file)
    ("fractional float", lambda y: np.where(np.arange(len(y)) == 4, 9.7, y.astype(np.float64)), ["9.7", "whole"]),
    ("NaN label", lambda y: np.where(np.arange(len(y)) == 2, np.nan, y.astype(np.float32)), ["nan"]),
    ("inf label", lambda y: np.where(np.arange(len(y)) == 2, np.inf, y.astype(np.float32)), ["inf"]),
    ("negative", _with(5, -1), ["-1", "outside"]),
    ("ten for ten classes", _with(5, 10), ["10", "outside"]),
    ("huge int", _with(0, 2 ** 62), [str(2 ** 62)]),
    ("uint64 max", lambda y: _with(3, np.iinfo(np.uint64).max)(y.astype(np.uint64)),
     [str(np.iinfo(np.uint64).max)]),
    ("huge float", lambda y: np.where(np.arange(len(y)) == 1, 1e30, y.astype(np.float64)), ["outside"]),
    ("booleans", lambda y: y % 2 == 0, ["bool"]),
    ("one-hot", lambda y: np.eye(10, dtype=np.float32)[y], ["one-hot", "argmax"]),
    ("one label too few", lambda y: y[:-1], ["labels of shape"]),
    ("two-dimensional", lambda y: y[:, None], ["shape"]),
    ("unknown class name", lambda y: np.array([CLASSES[i] for i in y[:-1]] + ["unicorn"]), ["unicorn"]),
    ("class name with another case", lambda y: np.array([CLASSES[i].upper() for i in y]), ["AIRPLANE"]),
    ("bytes that are not UTF-8", lambda y: np.array([b"\xff\xfe"] * len(y)), ["UTF-8"]),
    ("complex numbers", lambda y: y.astype(np.complex64), ["complex"]),
    ("pickled objects", lambda y: np.array([{"label": int(i)} for i in y], dtype=object), ["pickled"]),
]


@pytest.mark.parametrize("command", ["evaluate", "learn"])
@pytest.mark.parametrize("make,names", [(m, n) for _, m, n in LABEL_CASES], ids=[c[0] for c in LABEL_CASES])
def test_bad_labels(device_export, pictures, tmp_path, command, make, names):
    images, labels = pictures
    data = write_npz(tmp_path / "labelled.npz", images=images, labels=make(labels))
    model = device_model_path(device_export)
    before = snapshot(device_export[0], tmp_path)
    extra = [f"--checkpoint={tmp_path / 'ck.npz'}", "--epochs=1"] if command == "learn" else []
    assert_user_error(run_app(command, f"--model={model}", f"--data={data}", *extra), "labelled.npz", *names)
    assert snapshot(device_export[0], tmp_path) == before  # no checkpoint was written


def test_whole_float_and_name_labels_mean_the_same_as_ints(device_export, pictures, tmp_path):
    """Labels are class indices (integers, or floats with whole values) or class names."""
    images, labels = pictures
    model = device_model_path(device_export)
    results = []
    for kind, values in (("int", labels), ("float", labels.astype(np.float32)),
                         ("name", np.array([CLASSES[i] for i in labels])),
                         ("bytes", np.array([CLASSES[i].encode() for i in labels])),
                         ("uint8", labels.astype(np.uint8))):
        data = write_npz(tmp_path / f"{kind}.npz", images=images, labels=values)
        results.append(app_json(run_app("evaluate", f"--model={model}", f"--data={data}")))
    assert all(r["confusion"] == results[0]["confusion"] and r["loss"] == results[0]["loss"] for r in results)


def _soft(labels, k=10, smooth=0.1):
    out = np.full((len(labels), k), smooth / (k - 1), np.float32)
    out[np.arange(len(labels)), labels] = 1 - smooth
    return out


def _soft_file(pictures, labels, changes):
    arrays = {"images": pictures, "soft_targets": _soft(labels), "temperature": np.float32(2.0),
              "class_names": np.array(CLASSES)}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value(arrays[key]) if callable(value) else value
    return arrays


def _row(i, row):
    def make(soft):
        soft = soft.copy()
        soft[i] = row
        return soft
    return make


SOFT_CASES = [
    # (id, changes to a valid soft-label file, names in the error besides the file)
    ("row sums to a half", {"soft_targets": lambda s: s / 2}, ["row 0", "sums to 0.5", "softmax"]),
    ("one row sums to two", {"soft_targets": _row(3, np.full(10, 0.2, np.float32))}, ["row 3", "sums to 2"]),
    ("logits instead of probabilities", {"soft_targets": lambda s: np.log(s)}, ["negative", "logits"]),
    ("NaN in a row", {"soft_targets": _row(5, np.nan)}, ["row 5", "NaN"]),
    ("inf in a row", {"soft_targets": _row(1, np.inf)}, ["row 1", "NaN or inf"]),
    ("one-dimensional", {"soft_targets": lambda s: s.argmax(axis=1)}, ["soft_targets", "shape"]),
    ("three-dimensional", {"soft_targets": lambda s: s[:, :, None]}, ["soft_targets", "shape"]),
    ("fewer rows than images", {"soft_targets": lambda s: s[:-2]}, ["soft_targets", "12 images"]),
    ("fewer columns than names", {"soft_targets": lambda s: s[:, :9] / s[:, :9].sum(1, keepdims=True)},
     ["soft_targets", "10 class names"]),
    ("text soft targets", {"soft_targets": lambda s: s.astype(str)}, ["soft_targets", "numbers"]),
    ("temperature NaN", {"temperature": np.float32(np.nan)}, ["temperature", "nan"]),
    ("temperature zero", {"temperature": np.float32(0)}, ["temperature", "[0.001, 1000]"]),
    ("temperature negative", {"temperature": np.float32(-4)}, ["temperature", "-4"]),
    ("temperature an array", {"temperature": np.array([2.0, 4.0])}, ["temperature", "one number"]),
    ("temperature text", {"temperature": np.array("warm")}, ["temperature"]),
    ("class names ints", {"class_names": np.arange(10)}, ["class_names", "strings"]),
    ("class names duplicated", {"class_names": np.array(CLASSES[:9] + ["cat"])}, ["class_names", "cat"]),
    ("class names two-dimensional", {"class_names": np.array(CLASSES).reshape(2, 5)}, ["class_names"]),
    ("no shared class", {"class_names": np.array([f"c{i}" for i in range(10)])}, ["none of the cloud classes"]),
    ("no soft targets", {"soft_targets": None}, ["soft_targets"]),
    ("no temperature", {"temperature": None}, ["temperature"]),
    ("no class names", {"class_names": None}, ["class_names"]),
    ("images scaled to 0..1", {"images": lambda x: x.astype(np.float32) / 255}, ["multiply them by 255"]),
]


@pytest.mark.parametrize("changes,names", [(c, n) for _, c, n in SOFT_CASES], ids=[c[0] for c in SOFT_CASES])
def test_bad_soft_labels(device_export, pictures, tmp_path, changes, names):
    images, labels = pictures
    soft = write_npz(tmp_path / "soft.npz", **_soft_file(images, labels, changes))
    model = device_model_path(device_export)
    before = snapshot(device_export[0], tmp_path)
    assert_user_error(run_app("learn-unseen", f"--model={model}", f"--soft_labels={soft}",
                              f"--checkpoint={tmp_path / 'ck.npz'}", "--epochs=1"), "soft.npz", *names)
    assert snapshot(device_export[0], tmp_path) == before


def test_valid_soft_labels_learn_and_the_temperature_flag_overrides(device_export, pictures, tmp_path):
    images, labels = pictures
    soft = write_npz(tmp_path / "soft.npz", **_soft_file(images, labels, {}))
    result = app_json(run_app("learn-unseen", f"--model={device_model_path(device_export)}", f"--soft_labels={soft}",
                              f"--checkpoint={tmp_path / 'ck.npz'}", "--epochs=1", "--temperature=3", "--quiet"))
    assert result["temperature"] == 3.0 and result["train_images"] + result["val_images"] == 12


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_images_to_learn_from(device_export, pictures, tmp_path, n):
    images, labels = pictures
    data = write_npz(tmp_path / "tiny.npz", images=images[:n], labels=labels[:n])
    before = snapshot(device_export[0], tmp_path)
    line = assert_user_error(run_app("learn", f"--model={device_model_path(device_export)}", f"--data={data}",
                                     f"--checkpoint={tmp_path / 'ck.npz'}"), "tiny.npz")
    if n:
        assert "at least 2" in line and "--val_data" in line
    assert snapshot(device_export[0], tmp_path) == before


def test_two_images_learn_and_the_result_is_valid_json(device_export, pictures, tmp_path):
    images, labels = pictures
    data = write_npz(tmp_path / "two.npz", images=images[:2], labels=labels[:2])
    result = app_json(run_app("learn", f"--model={device_model_path(device_export)}", f"--data={data}",
                              f"--checkpoint={tmp_path / 'ck.npz'}", "--epochs=1", "--quiet"))
    assert result["train_images"] == 1 and result["val_images"] == 1
    assert result["best_val"] is not None and 0 <= result["best_val"] <= 1


def test_val_groups_without_validation_images_is_refused(device_export, pictures, tmp_path):
    """Groups none of whose classes are in the validation data would score NaN."""
    images, labels = pictures
    keep = np.isin(labels, [0, 1, 8, 9])
    data = write_npz(tmp_path / "vehicles.npz", images=images[keep], labels=labels[keep])
    val = write_npz(tmp_path / "vehicles_val.npz", images=images[keep], labels=labels[keep])
    before = snapshot(tmp_path)
    assert_user_error(run_app("learn", f"--model={device_model_path(device_export)}", f"--data={data}",
                              f"--val_data={val}", "--val_groups=pets=cat,dog", f"--checkpoint={tmp_path / 'c.npz'}"),
                      "--val_groups=pets=cat,dog", "validation")
    assert snapshot(tmp_path) == before


def test_a_real_process_gets_one_line_and_exit_2(device_export, pictures, tmp_path):
    images, labels = pictures
    data = write_npz(tmp_path / "labelled.npz", images=images,
                     labels=np.where(np.arange(len(labels)) == 4, 9.7, labels.astype(np.float64)))
    before = snapshot(tmp_path)
    assert_user_error(run_app_process("evaluate", f"--model={device_model_path(device_export)}", f"--data={data}"),
                      "labelled.npz", "9.7")
    assert snapshot(tmp_path) == before
