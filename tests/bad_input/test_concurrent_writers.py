"""Two runs, one output: the device app's learn commands and every pipeline binary hold an
exclusive lock on what they write (--checkpoint, --out_dir, --out); a second run is refused at
once with one line naming the first run's process, a lock left by a killed run is taken over,
and the first run's result is whole. Real processes throughout."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT
from harness import (app_json, assert_user_error, device_model_path, real_images, run_app, run_pipelines, write_npz)
from tflite_runtime_app import checkpoint as ckpt
from tflite_runtime_app import lock

_ENV = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}

_HOLD = ("import sys, time\n"
         "from tflite_runtime_app.lock import exclusive\n"
         "with exclusive(sys.argv[1], 'held', 'wait'):\n"
         "    print('held', flush=True)\n"
         "    time.sleep(600)\n")


@contextlib.contextmanager
def held_by_another_process(path):
    """A separate process that holds the lock of `path` until the block ends; yields it."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], cwd=REPO_ROOT, env=_ENV,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def learn_data(tmp_path_factory, cifar):
    folder = tmp_path_factory.mktemp("concurrent")
    images, labels = real_images(cifar, 48)
    return write_npz(folder / "data.npz", images=images, labels=labels)


def _wait_for(predicate, proc, what, timeout=240.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"the first run ended (code {proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_a_second_learn_on_a_checkpoint_in_use_is_refused_and_the_first_ends_whole(device_export, learn_data,
                                                                                    tmp_path):
    model = device_model_path(device_export)
    ck = tmp_path / "ck.npz"
    args = ["learn", f"--model={model}", f"--data={learn_data}", f"--checkpoint={ck}", "--epochs=2",
            "--checkpoint_every=1", "--quiet", "--seed=0"]
    # The first run writes slowly (each checkpoint write waits 1 s), so it is surely running.
    first = subprocess.Popen([sys.executable, "-m", "tflite_runtime_app", *args], cwd=REPO_ROOT,
                             env={**_ENV, ckpt.DELAY_ENV: "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        _wait_for(lambda: ck.exists(), first, "its first checkpoint")
        line = assert_user_error(run_app(*args), f"--checkpoint={ck}", f"process {first.pid}", "another --checkpoint")
        assert "in use" in line
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["epochs"] == 2
    with np.load(ck) as z:
        assert all(np.all(np.isfinite(z[k])) for k in z.files if k.startswith(ckpt.WEIGHT_PREFIX))
    assert not os.path.exists(lock.lock_path(ck))
    # With the first run over, the same command runs (and finds the run complete).
    assert app_json(run_app(*args))["epochs"] == 2


def test_a_lock_left_by_a_killed_run_is_taken_over(device_export, learn_data, tmp_path):
    model = device_model_path(device_export)
    ck = tmp_path / "ck.npz"
    with held_by_another_process(ck) as holder:
        assert lock.holder(ck) is not None and str(holder.pid) in lock.holder(ck)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert os.path.exists(lock.lock_path(ck)), "a killed holder cannot remove its lock file"
    assert lock.holder(ck) is None
    result = app_json(run_app("learn", f"--model={model}", f"--data={learn_data}", f"--checkpoint={ck}",
                              "--epochs=1", "--quiet"))
    assert result["epochs"] == 1 and ck.exists()
    assert not os.path.exists(lock.lock_path(ck))


def test_learn_unseen_holds_its_checkpoint_too(device_export, cifar, tmp_path):
    model = device_model_path(device_export)
    ck = tmp_path / "unseen.npz"
    images, _ = real_images(cifar, 16)
    soft = np.full((16, 10), 0.1, np.float32)
    data = write_npz(tmp_path / "soft.npz", images=images, soft_targets=soft, temperature=np.float32(4.0),
                     class_names=np.asarray(cifar.class_names))
    with held_by_another_process(ck) as holder:
        assert_user_error(run_app("learn-unseen", f"--model={model}", f"--soft_labels={data}",
                                  f"--checkpoint={ck}", "--epochs=1", "--quiet"),
                          f"--checkpoint={ck}", f"process {holder.pid}")
    assert not ck.exists()


def test_evaluate_reads_a_checkpoint_in_use(device_export, learn_data, tmp_path):
    """Only writers lock: evaluating a checkpoint while learn writes it is allowed (its writes
    are atomic, so a reader sees one whole checkpoint)."""
    model = device_model_path(device_export)
    ck = tmp_path / "ck.npz"
    app_json(run_app("learn", f"--model={model}", f"--data={learn_data}", f"--checkpoint={ck}", "--epochs=1",
                     "--quiet"))
    with held_by_another_process(ck):
        result = app_json(run_app("evaluate", f"--model={model}", f"--data={learn_data}", f"--checkpoint={ck}"))
    assert 0.0 <= result["accuracy"] <= 1.0


def test_pipelines_refuse_an_out_dir_or_out_in_use(pipeline_inputs, tmp_path):
    """Every binary locks its --out_dir (and --out): refused at once, naming the holder, and
    nothing is created (not the folder, not its parents)."""
    out_dir = tmp_path / "new" / "run"
    teacher, tree = pipeline_inputs["teacher"], pipeline_inputs["tree"]
    cases = {
        "pipelines.train_cloud": [f"--data={tree}", f"--out_dir={out_dir}", "--epochs=1"],
        "pipelines.prune": [f"--teacher={teacher}", f"--data={tree}", f"--out_dir={out_dir}"],
        "pipelines.export_tflite": [f"--model={teacher}", f"--out_dir={out_dir}"],
        "pipelines.transfer": [f"--teacher={teacher}", f"--student={teacher}", f"--data={tree}",
                               f"--out_dir={out_dir}"],
    }
    with held_by_another_process(out_dir) as holder:
        for module, args in cases.items():
            (result,) = run_pipelines(module, [args])
            assert_user_error(result, f"--out_dir={out_dir}", f"process {holder.pid}", "another --out_dir")
            assert not out_dir.exists(), module
    soft = tmp_path / "soft.npz"
    with held_by_another_process(soft) as holder:
        (result,) = run_pipelines("pipelines.soft_labels", [[f"--model={teacher}", f"--images={tree}",
                                                             f"--out={soft}"]])
        assert_user_error(result, f"--out={soft}", f"process {holder.pid}")
        assert not soft.exists()


def test_one_lock_per_output_whatever_its_spelling_and_nothing_beside_it(tmp_path, monkeypatch):
    monkeypatch.setenv(lock.LOCK_DIR_ENV, str(tmp_path / "locks"))
    (tmp_path / "a").mkdir()
    os.symlink(tmp_path / "a", tmp_path / "link")
    out = tmp_path / "a" / "new" / "run"  # its folder does not exist yet
    spellings = [out, str(out) + os.sep, tmp_path / "a" / "x" / ".." / "new" / "run", tmp_path / "link" / "new" / "run"]
    assert len({lock.lock_path(p) for p in spellings}) == 1
    assert os.path.dirname(lock.lock_path(out)) == str(tmp_path / "locks")
    with lock.exclusive(out, "--out_dir=run", "pass another --out_dir"):
        assert os.path.exists(lock.lock_path(out))
        assert sorted(os.listdir(tmp_path / "a")) == [], "nothing is written beside the output"
        os.makedirs(out)  # the run creates its folder: the same lock still covers it
        assert lock.lock_path(out) == lock.lock_path(tmp_path / "link" / "new" / "run")
        with lock.exclusive(out, "--out_dir=run", "pass another --out_dir"):  # the same run, deeper
            pass
        assert os.path.exists(lock.lock_path(out)), "the inner block must not release the outer lock"
        assert str(os.getpid()) in lock.holder(out)
    assert not os.path.exists(lock.lock_path(out))
