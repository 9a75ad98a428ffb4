"""Knowledge-transfer losses against hand-computed values, the distiller, and the transfer
binary on real images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgekt import models
from edgekt.models import heads
from edgekt.transfer import TransferConfig, losses

from conftest import quick_wrn


def test_cross_entropy_by_hand():
    logits = np.array([[0.0, math.log(3.0)]], np.float32)      # softmax = [0.25, 0.75]
    targets = np.array([[0.0, 1.0]], np.float32)
    assert float(losses.cross_entropy(targets, logits)[0]) == pytest.approx(-math.log(0.75), rel=1e-6)
    # Label smoothing 0.2 over 2 classes: targets [0.1, 0.9].
    expected = -(0.1 * math.log(0.25) + 0.9 * math.log(0.75))
    assert float(losses.cross_entropy(targets, logits, 0.2)[0]) == pytest.approx(expected, rel=1e-6)


def test_kd_loss_by_hand():
    s = np.array([[0.0, 0.0]], np.float32)                      # student at T=2: [0.5, 0.5]
    t = np.array([[0.0, 2 * math.log(3.0)]], np.float32)        # teacher at T=2: [0.25, 0.75]
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(losses.kd_loss(s, t, temperature=2.0)[0]) == pytest.approx(4.0 * kl, rel=1e-5)
    assert float(losses.kd_loss(t, t, temperature=2.0)[0]) == pytest.approx(0.0, abs=1e-7)


def test_soft_target_loss_by_hand():
    s = np.array([[0.0, math.log(3.0)]], np.float32)
    soft = np.array([[0.5, 0.5]], np.float32)
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert float(losses.soft_target_loss(s, soft, temperature=1.0)[0]) == pytest.approx(expected, rel=1e-6)


def test_attention_transfer_by_hand():
    a = np.zeros((1, 2, 2, 2), np.float32)
    a[0, 0, 0, :] = 1.0                                          # attention map [1, 0, 0, 0] after normalising
    b = np.zeros((1, 2, 2, 3), np.float32)
    b[0, 1, 1, :] = 2.0                                          # [0, 0, 0, 1]
    np.testing.assert_allclose(np.asarray(losses.attention_map(a)), [[1, 0, 0, 0]], atol=1e-6)
    assert float(losses.attention_transfer_loss(a, b)[0]) == pytest.approx(2.0 / 4.0, rel=1e-6)
    assert float(losses.attention_transfer_loss(a, a)[0]) == pytest.approx(0.0, abs=1e-7)


def test_transfer_config_checks():
    with pytest.raises(ValueError, match="at least one loss term"):
        TransferConfig(ce_weight=0, kd_weight=0, at_weight=0)
    assert not TransferConfig.labels_only().uses_teacher


def test_select_outputs_keeps_chosen_logits():
    model = models.wrn(10, 1)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    sub = heads.select_outputs(model, [4, 0, 2])
    np.testing.assert_allclose(np.asarray(sub(x)), np.asarray(model(x))[:, [4, 0, 2]], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"output indices must be in 0..9"):
        heads.select_outputs(model, [10])


def _run_transfer(args, cache_dir):
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3", "EDGEKT_CACHE_DIR": cache_dir}
    return subprocess.run([sys.executable, "-m", "pipelines.transfer", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_transfer_binary_distils_a_new_student_on_real_images(cifar, cache_dir, tmp_path):
    import keras

    from conftest import CIFAR10_ARCHIVE
    from edgekt import evaluation, flops

    teacher = quick_wrn(cifar["train"], 3000, seed=0)
    teacher_path = str(tmp_path / "teacher.keras")
    teacher.save(teacher_path)
    out = tmp_path / "student"
    common = [f"--teacher={teacher_path}", f"--data={CIFAR10_ARCHIVE}", "--preset=smoke", "--train_size=1024",
              "--test_size=500", "--val_size=500", "--epochs=2", "--batch_size=64", "--temperature=2"]
    proc = _run_transfer(common + ["--student=wrn-10-1", f"--out_dir={out}"], cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["loss"]["temperature"] == 2 and metrics["config"]["loss"]["kd_weight"] == 0.9
    assert metrics["config"]["optimization"]["epochs"] == 2
    assert metrics["attention_layers"] and metrics["train_images"] == 1024
    losses_by_epoch = [row["loss"] for row in metrics["history"]]
    assert len(losses_by_epoch) == 2 and losses_by_epoch[1] < losses_by_epoch[0]
    assert len((out / "history.csv").read_text().strip().splitlines()) == 3
    student = keras.models.load_model(out / "student.keras")
    assert flops.count_params(student) == metrics["params"] == flops.count_params(models.wrn(10, 1))
    test = cifar["test"]
    from edgekt import data

    test = data.stratified_subset(test, 500, seed=0)
    assert evaluation.evaluate(student, test.images, test.labels)["accuracy"] == pytest.approx(
        metrics["test_accuracy"], abs=1e-6)
    assert metrics["test_accuracy"] > 0.15  # chance is 0.10

    # A student with other classes, and a student that is neither a file nor a WRN name.
    wrong = str(tmp_path / "wrong.keras")
    models.wrn(10, 1, num_classes=7).save(wrong)
    proc = _run_transfer(common + [f"--student={wrong}", f"--out_dir={tmp_path / 'w'}"], cache_dir)
    assert proc.returncode == 2 and "the student: has 7 outputs but the data has 10 classes" in proc.stderr
    proc = _run_transfer(common + ["--student=resnet", f"--out_dir={tmp_path / 'w'}"], cache_dir)
    assert proc.returncode == 2 and "--student=resnet: neither a .keras model file nor wrn-DEPTH-WIDTH" in proc.stderr


def test_transfer_stage_preset_routes_overrides():
    from edgekt.transfer import config as stage_config

    cfg = stage_config.preset("cpu", temperature=2.0, at_weight=0.0, epochs=3, train_size=500, seed=4)
    assert (cfg.loss.temperature, cfg.loss.at_weight, cfg.loss.kd_weight) == (2.0, 0.0, 0.9)
    assert (cfg.optimization.epochs, cfg.optimization.seed, cfg.train_size) == (3, 4, 500)
    assert stage_config.preset("cpu").optimization.epochs == 10  # the preset itself is unchanged
    with pytest.raises(ValueError, match="transfer setting 'bogus': unknown"):
        stage_config.preset("cpu", bogus=1)
    with pytest.raises(ValueError, match="precision=.fp8.: must be one of"):
        stage_config.preset("cpu", precision="fp8")
    with pytest.raises(ValueError, match="at least one loss term needs a positive weight"):
        stage_config.preset("cpu", ce_weight=0.0, kd_weight=0.0, at_weight=0.0)
    with pytest.raises(ValueError, match="train_size=10: must be >= batch_size"):
        stage_config.preset("cpu", train_size=10)
