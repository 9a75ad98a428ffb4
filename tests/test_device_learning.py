"""The on-device learning benchmark: the device pool the cloud never trains on, lineage of the
device models (proved with traps), device data, metrics, and the smoke preset end to end."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from edgekt import data, train
from edgekt.device_learning import config as dl_config
from edgekt.device_learning.device_model import build_device_model
from edgekt.device_learning.methods import ABLATIONS, METHODS, Method
from edgekt.device_learning.pools import LineageError, Pools, draw_device_data
from edgekt.device_learning.protocol import load_pools
from edgekt.prune.config import PruneConfig
from tflite_runtime_app.metrics import classification_metrics

from conftest import CIFAR10_ARCHIVE, REPO_ROOT, quick_wrn

SPLIT = dl_config.ClassSplit(old=("airplane", "automobile", "bird", "cat", "deer"), new=("dog", "frog", "horse"),
                             unseen=("ship", "truck"))
TINY_PRUNE = PruneConfig(target_params_ratio=0.5, steps=1, step_epochs=1, final_epochs=1, calibration_size=64,
                         batch_size=32)


def _rows(images: np.ndarray) -> set[bytes]:
    return {hashlib.sha1(x.tobytes()).digest() for x in images}


@pytest.fixture(scope="module")
def subset(cifar):
    return data.DataSplits({"train": data.stratified_subset(cifar["train"], 3000, seed=0),
                            "test": data.stratified_subset(cifar["test"], 500, seed=0)},
                           cifar.class_names, "cifar10-subset")


@pytest.fixture(scope="module")
def prepared(subset):
    return data.prepare_splits(subset, val_size=500, seed=0, device_pool_size=1000)


def test_device_pool_is_disjoint_balanced_and_leaves_validation_unchanged(subset, prepared):
    train_rows, val_rows, pool_rows = (_rows(s.images) for s in (prepared.train, prepared.val, prepared.device_pool))
    assert len(prepared.train.labels) == 1500 and len(prepared.device_pool.labels) == 1000
    assert not (train_rows & pool_rows) and not (val_rows & pool_rows) and not (train_rows & val_rows)
    assert not (pool_rows & _rows(prepared.test.images))
    assert np.bincount(prepared.device_pool.labels).tolist() == [100] * 10
    without = data.prepare_splits(subset, val_size=500, seed=0)
    np.testing.assert_array_equal(without.val.images, prepared.val.images)
    with pytest.raises(data.DataError, match="leaves no training images"):
        data.prepare_splits(subset, val_size=500, seed=0, device_pool_size=2500)


def test_cloud_training_never_reads_the_device_pool(subset, prepared, tmp_path):
    cfg = train.CloudTrainConfig(depth=10, width=1, epochs=1, batch_size=64, learning_rate=0.05, warmup_epochs=0.0,
                                 val_size=500, device_pool_size=1000, test_size=100, augment=False, seed=0)
    pool = _rows(prepared.device_pool.images)
    images = subset["train"].images.copy()
    in_pool = np.array([hashlib.sha1(x.tobytes()).digest() in pool for x in images])
    assert in_pool.sum() == 1000
    images[in_pool] = 255 - images[in_pool]  # poison: a run that read them would train differently
    poisoned = data.DataSplits({"train": data.Split(images, subset["train"].labels, subset.class_names),
                                "test": subset["test"]}, subset.class_names, "cifar10-subset")
    a = train.train_and_evaluate(cfg, subset, str(tmp_path / "a"), verbose=0)
    b = train.train_and_evaluate(cfg, poisoned, str(tmp_path / "b"), verbose=0)
    for wa, wb in zip(keras.models.load_model(tmp_path / "a" / "model.keras").get_weights(),
                      keras.models.load_model(tmp_path / "b" / "model.keras").get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    assert a["train_images"] == 1500 and a["device_pool"]["size"] == 1000
    assert a["device_pool"]["excluded_from_training"] and a["device_pool"]["sha256"] != b["device_pool"]["sha256"]
    # The benchmark refuses pools that are not the ones the cloud was trained without.
    with pytest.raises(data.DataError, match="differs from the one the cloud model was trained"):
        load_pools(poisoned, a)
    assert load_pools(subset, a).device.count("ship") == 100


def test_device_model_reads_old_class_images_only(prepared, tmp_path):
    """Building with every new/unseen image (and the whole device and test pools) replaced by a
    trap gives the same model; a builder that touched one would raise."""
    teacher = quick_wrn(prepared.train, 1000, seed=0)
    pools = Pools.from_prepared(prepared)
    clean = build_device_model(teacher, pools, SPLIT, TINY_PRUNE, str(tmp_path / "clean"))
    trapped_pools = pools.poisoned(SPLIT.old)
    trapped = build_device_model(teacher, trapped_pools, SPLIT, TINY_PRUNE, str(tmp_path / "trapped"))
    assert clean["lineage"]["images_of"] == list(SPLIT.old) == trapped["lineage"]["images_of"]
    assert clean["lineage"]["labels_of"] == list(SPLIT.old)
    a, b = (keras.models.load_model(r["model_path"]) for r in (clean, trapped))
    assert a.output_shape[-1] == len(SPLIT.old) and a.count_params() == b.count_params()
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
    # The traps are live: reading a forbidden class fails loudly.
    with pytest.raises(LineageError, match="cloud-train images of 'dog'"):
        trapped_pools.cloud_train.take(["airplane", "dog"])
    with pytest.raises(LineageError, match="device images of 'airplane'"):
        np.asarray(trapped_pools.device.images("airplane"))


def test_device_data_parts_are_disjoint_and_short_classes_are_named(prepared):
    pools = Pools.from_prepared(prepared)
    kwargs = dict(new_per_class=40, val_per_class=20, replay_per_class=10, unseen_per_class=50,
                  unseen_val_per_class=30)
    dd = draw_device_data(pools.device, SPLIT.device_classes, SPLIT.old, SPLIT.new, SPLIT.unseen, seed=0, **kwargs)
    assert len(dd.new_labels) == 120 and set(dd.new_labels.tolist()) == {5, 6, 7}
    assert len(dd.val_labels) == 160 and set(dd.val_labels.tolist()) == set(range(8))
    assert len(dd.unseen_labels) == 100 and set(dd.unseen_labels.tolist()) == {8, 9}
    parts = [dd.new_images, dd.val_images, dd.replay_images, dd.unseen_images, dd.unseen_val_images]
    seen: set[bytes] = set()
    for part in parts:
        rows = _rows(part)
        assert not rows & seen
        seen |= rows
    assert _rows(dd.kept_new_images) <= _rows(dd.new_images) and len(dd.kept_new_labels) == 30
    other = draw_device_data(pools.device, SPLIT.device_classes, SPLIT.old, SPLIT.new, SPLIT.unseen, seed=1, **kwargs)
    assert not np.array_equal(other.new_images, dd.new_images)
    with pytest.raises(data.DataError, match="class 'ship': has 100 device-pool images, this protocol needs 130"):
        draw_device_data(pools.device, SPLIT.device_classes, SPLIT.old, SPLIT.new, SPLIT.unseen, seed=0,
                         **{**kwargs, "unseen_per_class": 100})


def test_classification_metrics_by_hand():
    logits = np.eye(3)[[0, 1, 1, 2, 2, 0]]
    labels = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(logits, labels, ["a", "b", "c"], groups={"ab": ["a", "b"], "c": ["c"]})
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["per_class"] == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert m["per_class_precision"] == {"a": 0.5, "b": 0.5, "c": 0.5}
    assert m["confusion"] == [[1, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert m["ab_recall"] == pytest.approx(0.5) and m["ab_images"] == 4 and m["c_precision"] == pytest.approx(0.5)
    never = classification_metrics(np.eye(3)[[0, 0]], np.array([0, 2]), ["a", "b", "c"], groups={"c": ["c"]})
    assert never["per_class_precision"]["c"] is None and never["c_precision"] == 0.0 and never["c_recall"] == 0.0
    half = classification_metrics(np.eye(3)[[0, 2]], np.array([0, 2]), ["a", "b", "c"], groups={"bc": ["b", "c"]})
    assert half["bc_precision"] == pytest.approx(0.5)  # c is right, b never predicted: 0, not skipped
    with pytest.raises(ValueError, match="group 'x' names classes \\['z'\\]"):
        classification_metrics(logits, labels, ["a", "b", "c"], groups={"x": ["z"]})


def test_splits_rotate_and_configs_are_checked():
    splits = dl_config.rotated_splits(dl_config.CIFAR10, 3, 3, 2)
    assert len({s.unseen for s in splits}) == 3 and all(len(s.device_classes) == 10 for s in splits)
    assert ("ship", "truck") not in {s.unseen for s in splits} or len(splits) > 1
    with pytest.raises(ValueError, match="must be disjoint"):
        dl_config.ClassSplit(("a", "b"), ("b",), ("c",))
    with pytest.raises(ValueError, match=r"lr_choices=\(0.01, 0.0\): must be at least one, each > 0"):
        dl_config.preset("smoke", lr_choices=(0.01, 0.0))
    with pytest.raises(ValueError, match="DeviceLearningConfig fields .*: unknown fields"):
        dl_config.preset("smoke", bogus=1)
    with pytest.raises(ValueError, match="the unseen update follows an incremental update"):
        Method("x", None, "cloud_soft", "x")
    assert set(METHODS) == {"ours", "finetune", "pseudo_label", "true_label_bound", "no_update"}


def test_cloud_model_without_a_device_pool_is_refused(subset):
    with pytest.raises(data.DataError, match="trained without a device pool"):
        load_pools(subset, {"config": {"val_size": 500, "seed": 0}})


def test_smoke_preset_runs_end_to_end_through_the_device_app(tmp_path, cache_dir):
    out = tmp_path / "exp"
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "3", "EDGEKT_CACHE_DIR": cache_dir}
    proc = subprocess.run([sys.executable, "-m", "pipelines.experiments", "--preset=smoke",
                           f"--data={CIFAR10_ARCHIVE}", f"--out_dir={out}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"ours", "finetune", "pseudo_label", "true_label_bound", "no_update"}
    for name, m in results["methods"].items():
        for key in ("old_recall", "new_recall", "unseen_recall", "unseen_precision", "accuracy",
                    "total_device_seconds"):
            assert key in m
        assert 0 <= m["old_recall"] <= 1
    ours, ft, none = results["methods"]["ours"], results["methods"]["finetune"], results["methods"]["no_update"]
    assert ours["unseen_recall"] is not None and ft["unseen_recall"] is None and none["new_recall"] is None
    # Figures that would only count classes a method never learns as errors are null, not results.
    assert 0 <= ours["accuracy"] <= 1 and ft["accuracy"] is None and none["seen_accuracy"] is None
    assert ours["total_device_seconds"] > ft["total_device_seconds"] > 0 and none["total_device_seconds"] is None
    before, after_incremental = results["updates"]["ours"][:2]
    assert before["new"]["mean"] is None and after_incremental["unseen"]["mean"] is None
    split = dl_config.PRESETS["smoke"].splits[0]
    device = results["lineage"][f"device_model[{split.name}]"]
    assert device["images_of"] == list(split.old) and device["labels_of"] == list(split.old)
    assert set(results["lineage"]["cloud"]["images_of"]) == set(dl_config.CIFAR10)
    (ns_split, by_student), = results["never_seen"].items()
    assert ns_split == "train-horse+ship+truck" and 0 <= by_student["wrn-16-1"]["paper"]["never_seen_recall"] <= 1
    student_lineage = results["lineage"]["never_seen_student[train-horse+ship+truck, wrn-16-1, paper]"]
    assert student_lineage["images_of"] == ["horse", "ship", "truck"] and student_lineage["labels_of"] == []
    assert student_lineage["initial_weights"].startswith("random initialisation")
    run = results["runs"][f"{split.name}/seed0"]["ours"]
    assert [u["after"] for u in run["updates"]] == ["before", "incremental", "unseen"]
    # Each method chose its (trainable, lr) on device validation among the whole grid.
    assert set(run["selection_val"]) == {"last_3_lr0.01", "classifier_lr0.01"}
    assert run["setting"] == max(run["selection_val"], key=run["selection_val"].get)
    assert run["selection_device_seconds"] > run["total_device_seconds"] > 0
    assert np.asarray(run["confusion"]).sum() == 5000
    # The incremental update's targets carry nothing of the unseen classes (not even the cloud's
    # probabilities on other classes' images); the unseen update's do.
    names = list(split.device_classes)
    unseen_cols = [names.index(c) for c in split.unseen]
    data_dir = out / "splits" / split.name / "seed0" / "data"
    incremental = np.load(data_dir / "incremental_soft.npz")["soft_targets"]
    assert np.all(incremental[:, unseen_cols] == 0) and np.allclose(incremental.sum(axis=1), 1.0, atol=1e-5)
    assert np.load(data_dir / "unseen_soft.npz")["soft_targets"][:, unseen_cols].sum() > 0
    # Ours imprints the rows it adds in each update; fine-tuning does not.
    assert run["imprinted"] == {"incremental": list(split.new), "unseen": list(split.unseen)}
    assert results["runs"][f"{split.name}/seed0"]["finetune"]["imprinted"] == {"incremental": []}
    # The ablation ran on seed 0, beside ours and fine-tuning on the same run.
    assert set(results["ablations"]) == {*ABLATIONS, "ours (same runs)", "finetune (same runs)"}
    assert results["ablations"]["ours (same runs)"]["accuracy"] == pytest.approx(ours["accuracy"])
    assert [u["after"] for u in results["updates"]["ours"]] == ["before", "incremental", "unseen"]
    text = (out / "results.md").read_text()
    assert "## Ablation" in text and "## Before and after each update" in text
    assert "## Where ours loses" in text and "| knowledge transfer (ours) |" in text and "## Lineage" in text
    for png in ("accuracy_per_update.png", "confusion_ours.png", "validation_vs_time.png", "never_seen_curve.png"):
        assert (out / png).stat().st_size > 1000
    # The end-to-end report shows the per-update comparison, the ablation and the plot.
    from edgekt import report

    workflow = tmp_path / "workflow" / "device_learning"
    workflow.mkdir(parents=True)
    for name in ("results.json", "accuracy_per_update.png"):
        (workflow / name).write_bytes((out / name).read_bytes())
    report.write(str(workflow.parent))
    summary_text = (workflow.parent / "report.md").read_text()
    assert "Incremental update (labelled new classes)" in summary_text and "## Ablation" in summary_text
    assert "## Never-seen transfer" in summary_text and "| horse, ship, truck | wrn-16-1 | paper |" in summary_text
    assert "data:image/png;base64" in (workflow.parent / "report.html").read_text()
    metrics = json.loads((out / "cloud" / "metrics.json").read_text())
    assert metrics["device_pool"]["size"] == dl_config.PRESETS["smoke"].device_pool_size


def test_never_seen_students_keep_or_reset_the_cloud_weights():
    from edgekt import models
    from edgekt.device_learning.never_seen import student_model

    keras.utils.set_random_seed(0)
    cloud = models.wrn(10, 2, num_classes=10)
    kept = student_model("pruned_cloud_weights", cloud, None, 0.3, 10, seed=0)
    bn_only = student_model("pruned_cloud_weights_bn", cloud, None, 0.3, 10, seed=0)
    fresh = student_model("pruned", cloud, np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), np.uint8), 0.3,
                          10, seed=0)
    assert kept.count_params() == bn_only.count_params() == fresh.count_params() < 0.35 * cloud.count_params()
    for a, b in zip(kept.get_weights(), bn_only.get_weights()):
        np.testing.assert_array_equal(a, b)
    # The surviving classifier is the cloud's (every row, never-seen classes included).
    head = [layer.name for layer in cloud.layers if isinstance(layer, keras.layers.Dense)][-1]
    np.testing.assert_array_equal(kept.get_layer(head).get_weights()[1], cloud.get_layer(head).get_weights()[1])
    assert not np.array_equal(fresh.get_layer(head).get_weights()[0], kept.get_layer(head).get_weights()[0])
    trainable = {v.path.split("/")[0] for v in bn_only.trainable_weights}
    assert trainable and all(isinstance(bn_only.get_layer(n), keras.layers.BatchNormalization) for n in trainable)
    assert len(kept.trainable_weights) > len(bn_only.trainable_weights)
    with pytest.raises(ValueError, match="unknown student"):
        student_model("bogus", cloud, None, 0.3, 10, seed=0)


def test_restrict_renormalises_over_the_kept_columns_by_hand():
    from edgekt.device_learning.device_runs import restrict

    probs = np.array([[0.1, 0.3, 0.6], [0.0, 0.0, 1.0]], np.float32)
    out = restrict(probs, [0, 1])
    np.testing.assert_allclose(out, [[0.25, 0.75, 0.0], [0.5, 0.5, 0.0]], rtol=1e-6)
