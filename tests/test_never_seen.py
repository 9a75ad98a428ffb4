"""The never-seen stage: the student's data holds only the chosen classes (proved with traps), its
losses against hand-computed values, the augmentation policy, resume after a kill, presets, and
`experiments --only=never_seen` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from edgekt import data, models
from edgekt.data import augment, pipeline
from edgekt.device_learning import config as dl_config
from edgekt.device_learning import never_seen
from edgekt.device_learning.config import PAPER_NEVER_SEEN, NeverSeenRun
from edgekt.transfer import losses
from edgekt.transfer.distiller import Distiller

from conftest import CIFAR10_ARCHIVE, REPO_ROOT, quick_wrn

SPLIT = PAPER_NEVER_SEEN[0]  # {horse, ship, truck} -> the other seven
TINY = dl_config.preset("smoke", never_seen_batch_size=32, never_seen_curve_every=1)


@pytest.fixture(scope="module")
def small(cifar):
    return data.DataSplits({"train": data.stratified_subset(cifar["train"], 600, seed=0),
                            "test": data.stratified_subset(cifar["test"], 200, seed=0)}, cifar.class_names, "small")


@pytest.fixture(scope="module")
def teacher(small):
    return quick_wrn(small["train"], 600, depth=10)


def _train(run, teacher, splits, folder, callbacks=()):
    images, read = never_seen.transfer_set(splits["train"], run)
    model, state = never_seen.train_student(run, teacher, images, splits["test"], TINY, 0.3, str(folder),
                                            identity={"run": run.name}, callbacks=callbacks)
    return model, state, read


def test_student_data_holds_only_the_chosen_classes_traps_give_identical_weights(small, teacher, tmp_path):
    run = NeverSeenRun(SPLIT, "wrn-16-1", "paper", epochs=1)
    train = small["train"]
    names = list(small.class_names)
    chosen = np.isin(train.labels, [names.index(c) for c in SPLIT.train])
    rng = np.random.default_rng(1)
    # Every image of any other class swapped for a trap (noise); labels as they were.
    trapped = data.Split(np.where(chosen[:, None, None, None], train.images,
                                  rng.integers(0, 256, train.images.shape, dtype=np.uint8)), train.labels,
                         train.class_names)
    a, state_a, read_a = _train(run, teacher, small, tmp_path / "a")
    b, state_b, read_b = _train(run, teacher, data.DataSplits({"train": trapped, "test": small["test"]},
                                                              small.class_names, "trapped"), tmp_path / "b")
    assert read_a == read_b == list(SPLIT.train)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    images, _ = never_seen.transfer_set(train, run)
    assert len(images) == int(chosen.sum()) == 180
    # The label column only chooses which images: other labels, other images.
    relabelled = data.Split(train.images, np.roll(train.labels, 1), train.class_names)
    assert not np.array_equal(never_seen.transfer_set(relabelled, run)[0], images)
    lin = never_seen.lineage(run, read_a, names)
    assert lin["images_of"] == ["horse", "ship", "truck"] and lin["labels_of"] == [] and lin["never_seen"]
    inherited = never_seen.lineage(NeverSeenRun(SPLIT, "pruned_cloud_weights", "kd"), read_a, names)
    assert not inherited["never_seen"] and inherited["classes_in_initial_weights"] == names


def test_transfer_set_sizes_and_errors(small):
    run = NeverSeenRun(SPLIT, "wrn-16-1", "paper", per_class=20)
    images, read = never_seen.transfer_set(small["train"], run)
    assert images.shape == (60, 32, 32, 3) and read == list(SPLIT.train)
    again, _ = never_seen.transfer_set(small["train"], run)
    np.testing.assert_array_equal(images, again)
    with pytest.raises(data.DataError, match="class 'horse': has 60 training images, the never-seen run needs 61"):
        never_seen.transfer_set(small["train"], NeverSeenRun(SPLIT, "wrn-16-1", "paper", per_class=61))
    with pytest.raises(data.DataError, match="class 'zebra' is not in the data"):
        never_seen.transfer_set(small["train"], NeverSeenRun(dl_config.NeverSeenSplit(("zebra",)), "wrn-16-1", "kd"))


def test_losses_match_hand_computed_values():
    rng = np.random.default_rng(0)
    s_logits, t_logits = rng.normal(size=(4, 10)).astype(np.float32), rng.normal(size=(4, 10)).astype(np.float32)
    s_f, t_f = rng.normal(size=(4, 8, 8, 3)).astype(np.float32), rng.normal(size=(4, 8, 8, 5)).astype(np.float32)

    def att(f):
        a = (np.abs(f.astype(np.float64)) ** 2).mean(axis=-1).reshape(len(f), -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    logit_rmse = np.sqrt(((s_logits.astype(np.float64) - t_logits) ** 2).mean(axis=1))
    feature_rmse = np.sqrt(((att(s_f) - att(t_f)) ** 2).mean(axis=1))
    p_t, p_s = softmax(t_logits / 4.0), softmax(s_logits / 4.0)
    kd = 16.0 * (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1)
    np.testing.assert_allclose(losses.logit_rmse(s_logits, t_logits), logit_rmse, rtol=1e-5)
    np.testing.assert_allclose(losses.feature_rmse(s_f, t_f), feature_rmse, rtol=1e-4)
    np.testing.assert_allclose(losses.kd_loss(s_logits, t_logits, 4.0), kd, rtol=1e-4)
    # The seed paper's code: one RMSE per batch, activations L2-normalised over the batch axis,
    # the student's channels zero-padded to the teacher's.
    def batch_norm(f):
        f = f.astype(np.float64)
        return f / np.sqrt(np.maximum((f * f).sum(axis=0, keepdims=True), 1e-12))

    padded = np.concatenate([batch_norm(s_f), np.zeros((4, 8, 8, 2))], axis=-1)
    np.testing.assert_allclose(float(losses.batch_normalized_rmse(s_f, t_f)),
                               np.sqrt(((batch_norm(t_f) - padded) ** 2).mean()), rtol=1e-5)
    np.testing.assert_allclose(float(losses.batch_normalized_rmse(t_f, s_f)),
                               np.sqrt(((batch_norm(t_f) - padded) ** 2).mean()), rtol=1e-5)
    np.testing.assert_allclose(float(losses.batch_logit_rmse(s_logits, t_logits)),
                               np.sqrt(((s_logits.astype(np.float64) - t_logits) ** 2).mean()), rtol=1e-5)
    # The stage's losses compose those terms: paper = batch logit RMSE + batch feature RMSE at the
    # three stage outputs, both = + KD, paper_attention = the per-example attention-map terms.
    keras.utils.set_random_seed(0)
    student, cloud = models.wrn(10, 1, num_classes=10), models.wrn(10, 2, num_classes=10)
    x = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    expected = {}
    for name in ("paper", "kd", "both", "paper_attention"):
        d = Distiller(student, cloud, never_seen.LOSSES[name](4.0))
        out = d(x, training=False)
        value = float(d.compute_loss(x, None, out, training=False))
        t_raw = d.teacher_probe(x, training=False)
        t_raw = t_raw if isinstance(t_raw, (list, tuple)) else [t_raw]
        s_out, t_out = [np.asarray(o) for o in out], [np.asarray(o) for o in t_raw]
        paper = (np.sqrt(((s_out[0].astype(np.float64) - t_out[0]) ** 2).mean())
                 + sum(np.sqrt(((batch_norm(b) - np.concatenate(
                     [batch_norm(a), np.zeros(a.shape[:3] + (b.shape[-1] - a.shape[-1],))], axis=-1)) ** 2).mean())
                       for a, b in zip(s_out[1:], t_out[1:])))
        attention = (np.sqrt(((s_out[0] - t_out[0]) ** 2).mean(axis=1))
                     + sum(np.sqrt(((att(a) - att(b)) ** 2).mean(axis=1)) for a, b in zip(s_out[1:], t_out[1:])))
        kd_hand = 16.0 * (softmax(t_out[0] / 4) * (np.log(softmax(t_out[0] / 4)) - np.log(softmax(s_out[0] / 4)))
                          ).sum(axis=1)
        expected[name] = {"paper": paper, "kd": kd_hand.mean(), "both": paper + kd_hand.mean(),
                          "paper_attention": attention.mean()}[name]
        assert value == pytest.approx(expected[name], rel=1e-3)
        if name != "kd":
            assert d.feature_layers == ["stage2_block1_relu1", "stage3_block1_relu1", "final_relu"]
    assert expected["both"] == pytest.approx(expected["paper"] + expected["kd"], rel=1e-6)


def test_policy_augment_is_per_image_deterministic_and_keeps_the_range(cifar):
    x = tf.constant(cifar["train"].images[:64].astype(np.float32))
    policy = augment.PolicyAugment()
    a = policy.augment(x, tf.constant([3, 4], tf.int64)).numpy()
    b = policy.augment(x, tf.constant([3, 4], tf.int64)).numpy()
    c = policy.augment(x, tf.constant([3, 5], tf.int64)).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    changed = np.abs(a - x.numpy()).mean(axis=(1, 2, 3))
    assert len(np.unique(np.round(changed, 3))) > 32  # the images got different operations
    cut = augment.cutout(tf.ones([16, 32, 32, 3]), tf.constant([1, 2], tf.int64), 16).numpy()
    zeros = (cut[..., 0] == 0).sum(axis=(1, 2))
    assert zeros.max() == 256 and zeros.min() >= 64 and np.all(cut[..., 0] == cut[..., 2])
    with pytest.raises(ValueError, match="factor must be in \\(0, 1\\]"):
        augment.PolicyAugment(factor=0)
    # In the training stream: the same batches for the same (seed, epoch).
    images, labels = cifar["train"].images[:64], cifar["train"].labels[:64]
    stream = lambda start: next(iter(pipeline.train_dataset(images, labels, batch_size=32, num_classes=10, epochs=2,
                                                            start_epoch=start, policy=True, cutout=16)))[0].numpy()
    np.testing.assert_array_equal(stream(1), stream(1))
    assert not np.array_equal(stream(0), stream(1))


class _Killed(Exception):
    pass


class _KillAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            raise _Killed()


def test_resume_after_a_kill_equals_an_uninterrupted_run(small, teacher, tmp_path):
    run = NeverSeenRun(SPLIT, "wrn-16-1", "both", epochs=3, mix="cutmix")
    whole, whole_state, _ = _train(run, teacher, small, tmp_path / "whole")
    with pytest.raises(_Killed):
        _train(run, teacher, small, tmp_path / "killed", callbacks=(_KillAfter(2),))
    assert json.loads((tmp_path / "killed" / "state.json").read_text())["epoch"] == 2
    resumed, resumed_state, _ = _train(run, teacher, small, tmp_path / "killed")
    for a, b in zip(whole.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [p["epoch"] for p in resumed_state["curve"]] == [1, 2, 3] == [p["epoch"] for p in whole_state["curve"]]
    assert resumed_state["curve"][-1]["never_seen"] == pytest.approx(whole_state["curve"][-1]["never_seen"], abs=0.01)
    assert len(resumed_state["history"]) == 3
    # A state of other settings is not resumed.
    assert never_seen.read_state(str(tmp_path / "killed"), {"run": "other"}) is None


def test_never_seen_presets_and_run_checks():
    paper = dl_config.PRESETS["never_seen"]
    assert {(r.split.name, r.student, r.loss) for r in paper.never_seen_runs} == {
        (s.name, st, loss) for s in PAPER_NEVER_SEEN for st in ("wrn-16-1", "pruned") for loss in ("paper", "both")}
    assert all(r.epochs == 200 and r.per_class is None and r.augment == "policy_cutout" for r in paper.never_seen_runs)
    assert paper.never_seen_batch_size == 128 and paper.never_seen_lr == 0.1 and paper.never_seen_curve_every == 10
    ablation = dl_config.PRESETS["never_seen_ablation"].never_seen_runs
    assert all(r.epochs == 50 and r.table == "ablation" for r in ablation)
    assert {r.loss for r in ablation} == {"paper", "kd", "both", "paper_attention"}
    assert {r.per_class for r in ablation} == {None, 1000}
    assert {r.augment for r in ablation} == {"none", "flip_crop", "policy_cutout"}
    assert {r.mix for r in ablation} == {"none", "cutmix", "mixup"}
    smoke = dl_config.PRESETS["smoke"].never_seen_runs
    assert any(not r.inherits_cloud_weights for r in smoke)
    with pytest.raises(ValueError, match="one main-table run per"):
        dl_config.preset("smoke", never_seen_runs=(NeverSeenRun(SPLIT, "wrn-16-1", "kd"),
                                                   NeverSeenRun(SPLIT, "wrn-16-1", "kd", mix="cutmix")))
    with pytest.raises(ValueError, match="loss='bogus': must be one of"):
        NeverSeenRun(SPLIT, "wrn-16-1", "bogus")
    with pytest.raises(ValueError, match="never_seen_runs=.*: must be distinct runs"):
        dl_config.preset("smoke", never_seen_runs=smoke + smoke)


def test_experiments_only_never_seen_end_to_end(tmp_path, small, teacher, cache_dir):
    from edgekt.models import saving

    cloud = tmp_path / "cloud"
    cloud.mkdir()
    saving.save_model(teacher, str(cloud / "model.keras"))
    (cloud / "metrics.json").write_text(json.dumps({"architecture": "WRN-10-1", "test_accuracy": None}))
    out = tmp_path / "exp"
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3", "EDGEKT_CACHE_DIR": cache_dir}
    proc = subprocess.run([sys.executable, "-m", "pipelines.experiments", "--preset=smoke", "--only=never_seen",
                           f"--teacher={cloud / 'model.keras'}", f"--data={CIFAR10_ARCHIVE}", f"--out_dir={out}"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["only"] == "never_seen" and "methods" not in results
    rec = results["never_seen"]["train-horse+ship+truck"]["wrn-16-1"]["paper"]
    assert 0 <= rec["never_seen_recall"] <= 1 and rec["epochs"] == 2 and rec["transfer_images"] == 300
    assert set(rec["per_class"]) == set(dl_config.CIFAR10) and np.asarray(rec["confusion"]).sum() == 5000
    assert rec["lineage"]["images_of"] == ["horse", "ship", "truck"] and rec["lineage"]["labels_of"] == []
    assert rec["lineage"]["initial_weights"].startswith("random initialisation")
    assert [p["epoch"] for p in rec["curve"]] == [1, 2]
    assert "## Never-seen transfer" in (out / "results.md").read_text()
    assert (out / "never_seen_curve.png").stat().st_size > 1000
    # A second run finds the result and trains nothing.
    again = subprocess.run(proc.args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and json.loads((out / "results.json").read_text())["never_seen"] == results[
        "never_seen"]


def test_shards_split_the_runs_and_read_each_others_results(small, teacher, tmp_path):
    from edgekt.device_learning.device_runs import DeviceApp
    from edgekt.device_learning.protocol import never_seen_stage

    runs = (NeverSeenRun(SPLIT, "wrn-16-1", "kd", per_class=40, epochs=1),
            NeverSeenRun(SPLIT, "wrn-16-1", "paper", per_class=40, epochs=1))
    cfg = dl_config.preset("smoke", never_seen_runs=runs)
    second = never_seen_stage(cfg, small, teacher, {}, "sha", str(tmp_path), DeviceApp(), shard=(1, 2))
    assert second[0] is None and second[1]["loss"] == "paper"
    assert not (tmp_path / "never_seen" / SPLIT.name / f"wrn-16-1_kd_{runs[0].variant}").exists()
    first = never_seen_stage(cfg, small, teacher, {}, "sha", str(tmp_path), DeviceApp(), shard=(0, 2))
    assert first[0]["loss"] == "kd" and first[1] == second[1]
    from pipelines.flag_utils import parse_shard
    from edgekt.errors import UserError

    assert parse_shard("1/2") == (1, 2) and parse_shard(None) is None
    for bad in ("2/2", "1", "a/b", "-1/2"):
        with pytest.raises(UserError, match=f"--shard={bad}: must be K/N"):
            parse_shard(bad)


def test_from_scratch_students_take_nothing_from_the_cloud_but_the_pruned_channel_counts(small):
    """The device-architecture student normalises with its own images' statistics, not the
    cloud's (computed on every class's images); its weights are fresh."""
    keras.utils.set_random_seed(0)
    cloud = models.wrn(10, 2, num_classes=10, mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    images, _ = never_seen.transfer_set(small["train"], NeverSeenRun(SPLIT, "pruned", "paper"))
    mean, std = pipeline.channel_stats(images)
    for kind in ("pruned", "wrn-16-1"):
        student = never_seen.student_model(kind, cloud, images, 0.3, 10, seed=0)
        norm = student.get_layer("normalize")
        np.testing.assert_allclose(np.ravel(norm.mean), mean, rtol=1e-5)
        np.testing.assert_allclose(np.sqrt(np.ravel(norm.variance)), std, rtol=1e-4)
    pruned = never_seen.student_model("pruned", cloud, images, 0.3, 10, seed=0)
    assert pruned.get_layer("stem_conv").get_weights()[0].shape[-1] < cloud.get_layer("stem_conv").get_weights()[0].shape[-1]
    assert not np.allclose(pruned.get_layer("stem_conv").get_weights()[0],
                           cloud.get_layer("stem_conv").get_weights()[0][..., :pruned.get_layer("stem_conv").get_weights()[0].shape[-1]])
