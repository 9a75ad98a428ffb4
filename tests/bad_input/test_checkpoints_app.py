"""Bad checkpoints for the device app (to evaluate, to start from with --init, to resume), a
diverging run, a full disk and a killed writer's leftovers: one line naming the checkpoint,
exit 2, and the checkpoint already saved is never changed or lost."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from harness import (app_json, assert_user_error, device_model_path, real_images, run_app, run_app_process, snapshot,
                     write_npz)
from tflite_runtime_app import checkpoint as ckpt


@pytest.fixture(scope="module")
def trained(tmp_path_factory, device_export, cifar):
    """(data .npz, a checkpoint of one epoch of `learn` on 16 real images)."""
    folder = tmp_path_factory.mktemp("trained")
    images, labels = real_images(cifar, 16)
    data = write_npz(folder / "data.npz", images=images, labels=labels)
    checkpoint = str(folder / "good.npz")
    app_json(run_app("learn", f"--model={device_model_path(device_export)}", f"--data={data}",
                     f"--checkpoint={checkpoint}", "--epochs=1", "--quiet"))
    return data, checkpoint


def _arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _rewrite(path, arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


def _corrupt(path):
    with open(path, "wb") as f:
        f.write(b"not a checkpoint at all")


def _truncated(path):
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])


def _other_model(path):
    arrays = _arrays(path)
    arrays["w/other_layer__kernel"] = arrays.pop("w/logits__kernel")
    _rewrite(path, arrays)


def _wrong_shape(path):
    arrays = _arrays(path)
    arrays["w/logits__bias"] = np.zeros(11, np.float32)
    _rewrite(path, arrays)


def _nan_weight(path):
    arrays = _arrays(path)
    arrays["w/logits__kernel"][3, 2] = np.nan
    _rewrite(path, arrays)


def _inf_best_weight(path):
    arrays = _arrays(path)
    arrays["best/stem_conv__kernel"].flat[0] = np.inf
    _rewrite(path, arrays)


def _pickled_array(path):
    arrays = _arrays(path)
    arrays["w/logits__bias"] = np.array([{"x": 1}] * 10, dtype=object)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # np.savez pickles object arrays
    with open(path, "wb") as f:
        f.write(buffer.getvalue())


def _state_not_json(path):
    arrays = _arrays(path)
    arrays["__state__"] = np.asarray("{not json")
    _rewrite(path, arrays)


def _state_a_list(path):
    arrays = _arrays(path)
    arrays["__state__"] = np.asarray("[1, 2]")
    _rewrite(path, arrays)


def _no_state(path):
    arrays = _arrays(path)
    del arrays["__state__"]
    _rewrite(path, arrays)


def _state_edit(**changes):
    """A state with keys changed (None: removed), as a hand-edited checkpoint would have."""
    def breaker(path):
        arrays = _arrays(path)
        state = json.loads(str(arrays["__state__"]))
        for key, value in changes.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        arrays["__state__"] = np.asarray(json.dumps(state))
        _rewrite(path, arrays)
    return breaker


def _float64_overflow(path):
    arrays = _arrays(path)
    arrays["w/logits__kernel"] = np.full(arrays["w/logits__kernel"].shape, 1e39, np.float64)  # inf as float32
    _rewrite(path, arrays)


def _int_weights(path):
    arrays = _arrays(path)
    arrays["w/logits__kernel"] = np.ones(arrays["w/logits__kernel"].shape, np.int32)
    _rewrite(path, arrays)


def _state_nested_deep(path):
    arrays = _arrays(path)
    arrays["__state__"] = np.asarray("[" * 200_000 + "]" * 200_000)
    _rewrite(path, arrays)


def _text_weights(path):
    arrays = _arrays(path)
    arrays["w/logits__bias"] = np.array(["a"] * 10)
    _rewrite(path, arrays)


def _single_array(path):
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))


def _zip_of_junk(path):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("w/logits__bias.npy", b"garbage")


CASES = [
    # (id, how to break a good checkpoint, names in the error besides the file)
    ("corrupt bytes", _corrupt, ["corrupt"]),
    ("truncated", _truncated, []),
    ("another model", _other_model, ["another model"]),
    ("wrong shape", _wrong_shape, ["logits__bias", "(11,)"]),
    ("NaN weight", _nan_weight, ["logits__kernel", "NaN"]),
    ("inf best weight", _inf_best_weight, ["stem_conv__kernel", "NaN or inf"]),
    ("pickled objects", _pickled_array, ["pickled"]),
    ("state not JSON", _state_not_json, ["state"]),
    ("state a list", _state_a_list, ["state"]),
    ("no state", _no_state, ["no state"]),
    ("state lacks elapsed", _state_edit(elapsed=None), ["state", "elapsed"]),
    ("state epoch a string", _state_edit(epoch="1"), ["state", "epoch", '"1"']),
    ("state learned classes nested", _state_edit(learned_classes=[["airplane"]]), ["state", "learned_classes"]),
    ("state done a number", _state_edit(done=3), ["state", "done"]),
    ("float64 weight over float32", _float64_overflow, ["logits__kernel", "NaN or inf"]),
    ("text weights", _text_weights, ["logits__bias"]),
    ("integer weights", _int_weights, ["logits__kernel", "int32"]),
    ("state nested 200,000 deep", _state_nested_deep, ["state"]),
    ("single array", _single_array, []),
    ("zip of junk", _zip_of_junk, []),
]
USES = {
    "evaluate": lambda model, data, ck, tmp: ["evaluate", f"--model={model}", f"--data={data}", f"--checkpoint={ck}"],
    "predict": lambda model, data, ck, tmp: ["predict", f"--model={model}", f"--images={data}", f"--checkpoint={ck}"],
    "init": lambda model, data, ck, tmp: ["learn", f"--model={model}", f"--data={data}", f"--init={ck}",
                                          f"--checkpoint={tmp / 'new.npz'}", "--epochs=1"],
    "resume": lambda model, data, ck, tmp: ["learn", f"--model={model}", f"--data={data}", f"--checkpoint={ck}",
                                            "--epochs=1"],
}


@pytest.mark.parametrize("use", sorted(USES))
@pytest.mark.parametrize("breaker,names", [(b, n) for _, b, n in CASES], ids=[c[0] for c in CASES])
def test_bad_checkpoint_is_refused_and_kept(device_export, trained, tmp_path, use, breaker, names):
    data, good = trained
    ck = tmp_path / "ck.npz"
    shutil.copyfile(good, ck)
    breaker(str(ck))
    before = snapshot(device_export[0], tmp_path, data)
    args = USES[use](device_model_path(device_export), data, ck, tmp_path)
    assert_user_error(run_app(*args), str(ck), *names)
    assert snapshot(device_export[0], tmp_path, data) == before  # nothing written, nothing changed


def test_learn_restart_replaces_a_bad_checkpoint(device_export, trained, tmp_path):
    """`--restart` ignores what is there (and learn without a checkpoint starts fresh)."""
    data, _ = trained
    ck = tmp_path / "ck.npz"
    _corrupt(str(ck))
    model = device_model_path(device_export)
    result = app_json(run_app("learn", f"--model={model}", f"--data={data}", f"--checkpoint={ck}", "--restart",
                              "--epochs=1", "--quiet"))
    assert result["epochs"] == 1
    weights, state, _ = ckpt.load(str(ck), {k: v.shape for k, v in _weights(str(ck)).items()})
    assert state["done"] and ckpt.first_non_finite(weights) is None


def _weights(path):
    return {k[2:]: v for k, v in _arrays(path).items() if k.startswith("w/")}


def test_diverging_run_stops_with_lr_advice_and_keeps_good_weights(device_export, trained, tmp_path, monkeypatch):
    """A run whose loss or weights become NaN stops with advice and keeps the last good weights.
    Rates the --lr flag accepts do not blow this small model up within a few steps, so the range
    is widened here to reach the stop with a rate that does."""
    from tflite_runtime_app import __main__ as app_main

    monkeypatch.setattr(app_main, "LEARNING_RATE_RANGE", (1e-8, 1e7))
    data, _ = trained
    ck = tmp_path / "ck.npz"
    model = device_model_path(device_export)
    result = run_app("learn", f"--model={model}", f"--data={data}", f"--checkpoint={ck}", "--lr=1e6", "--epochs=3",
                     "--checkpoint_every=1", "--quiet")
    line = assert_user_error(result, "--lr=1e+06", "too high", str(ck))
    assert "--lr=100000" in line.rsplit("; ", 1)[1]  # a tenth of the rate
    assert not result.stdout.strip()  # no result JSON with NaN
    # What is on disk holds the last good (finite) weights and loads.
    weights, state, best = ckpt.load(str(ck), {k: v.shape for k, v in _weights(str(ck)).items()})
    assert ckpt.first_non_finite(weights) is None and ckpt.first_non_finite(best) is None
    assert state["global_step"] >= 1


def test_full_disk_keeps_the_previous_checkpoint(device_export, trained, tmp_path, monkeypatch):
    data, good = trained
    ck = tmp_path / "ck.npz"
    shutil.copyfile(good, ck)
    before = snapshot(tmp_path)
    real_open = open

    class FullDisk:
        """A file on a disk that fills up after the first bytes."""

        def __init__(self, path):
            self.file = real_open(path, "wb")

        def write(self, data):
            self.file.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def fake_open(path, mode="r", *args, **kwargs):
        return FullDisk(path) if mode == "wb" else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(ckpt, "open", fake_open, raising=False)
    result = run_app("learn", f"--model={device_model_path(device_export)}", f"--data={data}",
                     f"--checkpoint={ck}", "--restart", "--epochs=1", "--quiet")
    line = assert_user_error(result, str(ck), "no space left on device", "free some space")
    assert "previous checkpoint was kept" in line
    assert snapshot(tmp_path) == before  # byte-identical, and no temporary file is left


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_run(device_export, trained, tmp_path):
    data, good = trained
    ck = tmp_path / "ck.npz"
    shutil.copyfile(good, ck)
    dead = _dead_pid()
    stale = [tmp_path / f".ck.npz.{dead}.k1ll3d_0.tmp", tmp_path / f".ck.prev.npz.{dead}.k1ll3d_1.tmp"]
    for path in stale:
        path.write_bytes(ck.read_bytes()[:5000])  # half a checkpoint, as a killed writer leaves it
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        live = tmp_path / f".ck.npz.{sleeper.pid}.wr1t1ng_.tmp"  # another process still writing
        live.write_bytes(b"in progress")
        other = tmp_path / f".other.npz.{dead}.abcdefgh.tmp"  # not this checkpoint's: left alone
        other.write_bytes(b"x")
        with open(good, "rb") as f:
            saved = f.read()
        # The same command again: the run is complete, so nothing is rewritten, yet the leftovers go.
        result = app_json(run_app("learn", f"--model={device_model_path(device_export)}", f"--data={data}",
                                  f"--checkpoint={ck}", "--epochs=1", "--quiet"))
        assert not any(path.exists() for path in stale)
        assert live.read_bytes() == b"in progress" and other.exists()
        assert result["epochs"] == 1 and ck.read_bytes() == saved
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, live.name, "ck.npz"])
        # A write removes them too.
        for path in stale:
            path.write_bytes(b"half")
        app_json(run_app("learn", f"--model={device_model_path(device_export)}", f"--data={data}",
                         f"--checkpoint={ck}", "--epochs=1", "--restart", "--quiet"))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, live.name, "ck.npz", "ck.prev.npz"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_evaluate_of_a_good_checkpoint_differs_from_the_export(device_export, trained):
    """A checkpoint that exists is used (and one that does not is refused, see test_flags_app)."""
    data, good = trained
    model = device_model_path(device_export)
    exported = app_json(run_app("evaluate", f"--model={model}", f"--data={data}"))
    trained_result = app_json(run_app("evaluate", f"--model={model}", f"--data={data}", f"--checkpoint={good}"))
    assert exported["loss"] != trained_result["loss"]


def test_a_checkpoint_given_as_data_is_named_as_one(device_export, trained):
    """A checkpoint mistaken for data is called a checkpoint (not listed array by array)."""
    _, good = trained
    model = device_model_path(device_export)
    line = assert_user_error(run_app("evaluate", f"--model={model}", f"--data={good}"), good, "checkpoint",
                             "--checkpoint")
    assert len(line) < 300, line


def test_no_hard_links_still_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    """File systems without hard links (FAT on a memory card): the previous checkpoint is copied."""
    _, good = trained
    path = str(tmp_path / "ck.npz")
    shutil.copyfile(good, path)
    weights = _weights(path)

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted", src)

    monkeypatch.setattr(os, "link", no_link)
    ckpt.save(path, weights, {"done": True})
    with open(good, "rb") as f:
        assert (tmp_path / "ck.prev.npz").read_bytes() == f.read()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz", "ck.prev.npz"]


def test_a_real_process_gets_one_line_and_exit_2(device_export, trained, tmp_path):
    data, good = trained
    ck = tmp_path / "ck.npz"
    shutil.copyfile(good, ck)
    _nan_weight(str(ck))
    before = snapshot(tmp_path)
    result = run_app_process("evaluate", f"--model={device_model_path(device_export)}", f"--data={data}",
                             f"--checkpoint={ck}")
    assert_user_error(result, str(ck), "logits__kernel", "NaN")
    assert snapshot(tmp_path) == before


def _huge_weights(path):
    """Finite weights far too large: every output overflows to inf or NaN."""
    arrays = _arrays(path)
    for key in arrays:
        if key.startswith("w/") and key.endswith("kernel"):
            arrays[key] = arrays[key] * np.float32(1e30)
    _rewrite(path, arrays)


@pytest.mark.parametrize("use", ["evaluate", "predict"])
def test_weights_that_overflow_every_output_are_refused(device_export, trained, tmp_path, use):
    data, good = trained
    ck = tmp_path / "ck.npz"
    shutil.copyfile(good, ck)
    _huge_weights(str(ck))
    before = snapshot(device_export[0], tmp_path, data)
    model = device_model_path(device_export)
    assert_user_error(run_app(*USES[use](model, data, ck, tmp_path)), model, "NaN or inf", "checkpoint")
    assert snapshot(device_export[0], tmp_path, data) == before



def test_resuming_after_two_labels_were_corrected_is_refused_naming_them(device_export, cifar, tmp_path):
    """A checkpoint is matched to its run by the bytes of the decoded data, not by shapes and
    sums: two labels swapped (same sum) make another run, refused with what differs."""
    model = device_model_path(device_export)
    images, labels = real_images(cifar, 16)
    data = write_npz(tmp_path / "data.npz", images=images, labels=labels)
    ck = tmp_path / "ck.npz"
    args = [f"--model={model}", f"--checkpoint={ck}", "--epochs=1", "--quiet"]
    app_json(run_app("learn", f"--data={data}", *args))
    corrected = labels.copy()
    i, j = next((i, j) for i in range(16) for j in range(16) if labels[i] != labels[j])
    corrected[i], corrected[j] = labels[j], labels[i]
    assert corrected.sum() == labels.sum() and corrected.shape == labels.shape
    data2 = write_npz(tmp_path / "corrected.npz", images=images, labels=corrected)
    saved = snapshot(ck)
    line = assert_user_error(run_app("learn", f"--data={data2}", *args), str(ck), "labels", "--restart")
    assert "images" not in line.split("differs:")[1].split(")")[0], line
    assert snapshot(ck) == saved
    # Another learning rate is another run too, and named as such.
    line = assert_user_error(run_app("learn", f"--data={data}", *args, "--lr=0.02"), str(ck), "learning_rate")
    assert snapshot(ck) == saved
    assert app_json(run_app("learn", f"--data={data2}", *args, "--restart"))["epochs"] == 1
