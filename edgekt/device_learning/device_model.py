"""The models the device starts from, built from the cloud model with old-class images only."""

from __future__ import annotations

import os

import keras

from edgekt import data
from edgekt.device_learning.config import ClassSplit
from edgekt.device_learning.pools import Pools
from edgekt.models import heads
from edgekt.prune import config as prune_config
from edgekt.prune import pruner
from edgekt.prune.allocation import select_channels
from edgekt.prune.criteria import l1_importance
from edgekt.prune.graph import build_graph
from edgekt.prune.surgery import prune_model
from edgekt.flops import model_cost
from edgekt.errors import UserError


def build_device_model(teacher: keras.Model, pools: Pools, split: ClassSplit, config: prune_config.PruneConfig,
                       out_dir: str, *, preset_name: str | None = None, teacher_path: str | None = None,
                       teacher_sha256: str | None = None) -> dict:
    """Prunes the cloud model for one class split, reading old-class images only.

    The cloud model's classifier is cut to the old classes; pruning calibration, fine-tuning
    (KD + attention transfer from that cut cloud model), BN statistics and the choice of step
    all use the cloud-train and cloud-validation images of the old classes. Resumes inside
    `out_dir` like the pruning stage.

    Returns:
      The pruning metrics, with "lineage": the classes whose images and labels were read, and
      "model_path".
    """
    if not config.step_epochs and not config.final_epochs:
        # Without fine-tuning the BN statistics would stay the cloud's, estimated on all classes.
        raise UserError("step_epochs/final_epochs: the device model must be fine-tuned on old-class images at least once (step_epochs or "
                         f"final_epochs > 0). Received: step_epochs={config.step_epochs}, "
                         f"final_epochs={config.final_epochs}")
    before = {p.name: set(p.read) for p in pools.all()}
    train = pools.cloud_train.take(split.old)
    val = pools.cloud_val.take(split.old)
    if config.train_size is not None and config.train_size < len(train.labels):
        train = data.stratified_subset(train, config.train_size, seed=config.seed)
    old_teacher = heads.select_outputs(teacher, [pools.class_names.index(c) for c in split.old])
    prepared = data.PreparedData(train, val, None, tuple(split.old), pools.source)
    metrics = pruner.prune_prepared(old_teacher, prepared, out_dir, config,
                                    holdout={"pools": "cloud-train and cloud-val, old classes", "old": list(split.old),
                                             "teacher_sha256": teacher_sha256},
                                    preset_name=preset_name, teacher_path=teacher_path)
    read = sorted({c for p in pools.all() for c in p.read - before[p.name]}, key=pools.class_names.index)
    metrics["lineage"] = {"images_of": read, "labels_of": read,
                          "teacher_outputs": list(split.old)}
    metrics["model_path"] = os.path.join(out_dir, pruner.PRUNED_FILE)
    return metrics


def data_free_pruned(teacher: keras.Model, target_params_ratio: float, min_channels: int = 2) -> keras.Model:
    """The cloud model pruned to `target_params_ratio` of its parameters by the L1 norm of its
    weights (no image is read), keeping the cloud's remaining weights."""
    graph = build_graph(teacher)
    cost = model_cost(teacher)
    keep = select_channels(graph, l1_importance(graph), max_params=int(cost.params * target_params_ratio),
                           min_channels=min_channels)
    return prune_model(teacher, keep, graph)


def data_free_pruned_architecture(teacher: keras.Model, target_params_ratio: float, num_outputs: int,
                                  seed: int = 0, min_channels: int = 2, mean_std: tuple | None = None) -> keras.Model:
    """`data_free_pruned`'s architecture re-initialised, with `num_outputs` classes (and, with
    `mean_std`, normalisation constants of its own: see `heads.reinitialized`)."""
    return heads.reinitialized(data_free_pruned(teacher, target_params_ratio, min_channels), seed=seed,
                               num_outputs=num_outputs, mean_std=mean_std)


__all__ = ["build_device_model", "data_free_pruned", "data_free_pruned_architecture"]
