"""The cloud stage: train a WRN teacher on all classes, with resumable per-epoch checkpoints."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time

import keras
from absl import logging

from edgekt import atomic, data, evaluation, flops
from edgekt.data import pipeline
from edgekt import models
from edgekt.models import saving
from edgekt.train import distribution as dist_lib
from edgekt.train.checkpoint import STATE_FILE, CheckpointManager
from edgekt.train.config import CloudTrainConfig
from edgekt.train.optimizers import L2SGD, learning_rate_schedule
from edgekt.errors import UserError

MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"


class _EpochRecorder(keras.callbacks.Callback):
    """Times each epoch's training part and checkpoints at its end."""

    def __init__(self, manager: CheckpointManager, state: dict, images_per_epoch: int, save: bool):
        super().__init__()
        self.manager, self.state, self.images_per_epoch, self.save = manager, state, images_per_epoch, save
        self._start = self._train_end = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._train_end = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        train_seconds = (self._train_end or now) - self._start
        row = {"epoch": epoch + 1, "train_seconds": train_seconds,
               "images_per_second": self.images_per_epoch / max(train_seconds, 1e-9)}
        row.update({k: float(v) for k, v in (logs or {}).items()})
        self.state["history"].append(row)
        self.state["epoch"] = epoch + 1
        self.state["train_seconds"] += train_seconds
        self.state["wall_seconds"] += now - self._start
        if self.save:
            self.manager.save(self.model, self.state)


def _config_dict(config: CloudTrainConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


@contextlib.contextmanager
def _dtype_policy(name: str):
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _is_chief() -> bool:
    if keras.backend.backend() != "tensorflow":
        return True
    import tensorflow as tf

    resolver = getattr(tf.distribute.get_strategy(), "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)


def build_and_compile(config: CloudTrainConfig, num_classes: int, mean, std, steps_per_epoch: int,
                      input_shape: tuple[int, int, int] = (32, 32, 3)) -> keras.Model:
    """Builds the WRN of `config` for images of `input_shape` (H, W, C) and compiles it with
    the configured optimizer and loss."""
    with _dtype_policy(config.precision):
        model = models.wrn(config.depth, config.width, num_classes=num_classes, dropout=config.dropout,
                           input_shape=tuple(int(d) for d in input_shape), mean=mean, std=std)
    total = config.epochs * steps_per_epoch
    lr = learning_rate_schedule(config.schedule, config.learning_rate, total,
                                warmup_steps=int(round(config.warmup_epochs * steps_per_epoch)),
                                milestones=config.milestones, gamma=config.gamma)
    optimizer = L2SGD(learning_rate=lr, momentum=config.momentum, nesterov=config.nesterov,
                      l2=config.weight_decay)
    model.compile(optimizer=optimizer,
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True,
                                                            label_smoothing=config.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                  jit_compile=config.jit_compile)
    return model


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuses an `out_dir` holding a model without a checkpoint to resume (another run's model,
    or one whose checkpoints were removed): training would replace it. `overwrite` allows it."""
    state_path = os.path.join(out_dir, CHECKPOINT_DIR, STATE_FILE)
    if not overwrite and os.path.exists(os.path.join(out_dir, MODEL_FILE)) and not os.path.exists(state_path):
        raise UserError(f"--out_dir={out_dir}: holds {MODEL_FILE} without a checkpoint to resume (another run's model, "
                        "or one whose checkpoints were removed), which training would replace; use another --out_dir, "
                        "or --overwrite to replace it")


def train_and_evaluate(config: CloudTrainConfig, source: str | data.DataSplits, out_dir: str, *,
                       distribution: str = "none", preset_name: str | None = None, verbose: str | int = "auto",
                       overwrite: bool = False, callbacks: tuple = ()) -> dict:
    """Trains the teacher of `config` on `source` and writes `out_dir/model.keras` and
    `out_dir/metrics.json`.

    Training resumes from `out_dir/checkpoints` when a checkpoint of the same config and
    data exists; a finished run is not repeated.

    Args:
      config: the training configuration.
      source: a data source for `edgekt.data.load`, or already loaded splits.
      out_dir: output folder.
      distribution: see `edgekt.train.distribution.distribution_scope`.
      preset_name: recorded in the metrics.
      verbose: Keras `fit` verbosity ("auto" shows a progress bar on a terminal).
      overwrite: discard an existing checkpoint or result instead of resuming.
      callbacks: extra Keras callbacks, run after the epoch's checkpoint is written.

    Returns:
      The metrics written to `metrics.json`.

    Raises:
      ValueError: `out_dir` holds a checkpoint of a different configuration or data.
    """
    splits = source if isinstance(source, data.DataSplits) else data.load(source)
    prepared = data.prepare_splits(splits, val_size=config.val_size, seed=config.seed,
                                   train_size=config.train_size, test_size=config.test_size,
                                   device_pool_size=config.device_pool_size, batch_size=config.batch_size)
    num_classes = len(prepared.class_names)
    steps = pipeline.steps_per_epoch(len(prepared.train.labels), config.batch_size)
    identity = {"config": _config_dict(config), "data": prepared.source,
                "train_images": int(len(prepared.train.labels)), "class_names": list(prepared.class_names),
                "data_digest": prepared.content_digest()}

    os.makedirs(out_dir, exist_ok=True)
    metrics_path = os.path.join(out_dir, METRICS_FILE)
    model_path = os.path.join(out_dir, MODEL_FILE)
    manager = CheckpointManager(os.path.join(out_dir, CHECKPOINT_DIR))
    check_out_dir(out_dir, overwrite)
    state = None if overwrite else manager.read_state()
    if state is not None and isinstance(state.get("identity"), dict) and "data_digest" not in state["identity"]:
        # Recorded before the data's digest was: matched by the data's path as then.
        state["identity"]["data_digest"] = identity["data_digest"]
    if state is not None and state.get("identity") != identity:
        diff = describe_difference(state.get("identity", {}), identity)
        raise UserError(f"{manager.state_path}: checkpoint was made with a different setup ({diff}); "
                         "use another --out_dir or --overwrite to start over")
    if (state is not None and state["epoch"] >= config.epochs and os.path.exists(metrics_path)
            and os.path.exists(model_path)):
        with open(metrics_path) as f:
            logging.info("%s: training already finished; returning its metrics", out_dir)
            return json.load(f)

    keras.utils.set_random_seed(config.seed)
    mean, std = pipeline.channel_stats(prepared.train.images)
    with dist_lib.distribution_scope(distribution):
        replicas = dist_lib.replicas_in_scope()
        if state is not None:
            logging.info("resuming from %s at epoch %d/%d", manager.state_path, state["epoch"], config.epochs)
            model = manager.load_model(state)
        else:
            state = {"identity": identity, "epoch": 0, "history": [], "train_seconds": 0.0, "wall_seconds": 0.0}
            model = build_and_compile(config, num_classes, mean, std, steps,
                                      input_shape=prepared.train.images.shape[1:])
    cost = flops.model_cost(model)
    logging.info("%s: %s params, %.1f MFLOPs/image, %d train / %d val / %d test images, %d replicas",
                 config.architecture, f"{cost.params:,}", cost.flops / 1e6, len(prepared.train.labels),
                 len(prepared.val.labels) if prepared.val else 0,
                 len(prepared.test.labels) if prepared.test else 0, replicas)

    start_epoch = int(state["epoch"])
    if start_epoch < config.epochs:
        train_ds = pipeline.train_dataset(prepared.train.images, prepared.train.labels,
                                          batch_size=config.batch_size, num_classes=num_classes,
                                          epochs=config.epochs, start_epoch=start_epoch, seed=config.seed,
                                          augment=config.augment)
        val_ds = None
        if prepared.val is not None:
            val_ds = pipeline.eval_dataset(prepared.val.images, prepared.val.labels,
                                           batch_size=max(config.batch_size, 256), num_classes=num_classes)
        recorder = _EpochRecorder(manager, state, steps * config.batch_size, save=_is_chief())
        model.fit(train_ds, epochs=config.epochs, initial_epoch=start_epoch, steps_per_epoch=steps,
                  validation_data=val_ds, callbacks=[recorder, *callbacks], verbose=verbose, shuffle=False)

    final = saving.float32_copy(model)
    result = _metrics(final, prepared, state, config, cost, preset_name, distribution, replicas)
    if _is_chief():
        saving.save_model(final, model_path)
        atomic.write_csv(os.path.join(out_dir, "history.csv"), state["history"])
        atomic.write_json(metrics_path, result)
    logging.info("%s: params %s, FLOPs %.1fM, test top-1 %s, %.0f img/s, %.0fs", config.architecture,
                 f"{result['params']:,}", result["flops"] / 1e6,
                 f"{result['test_accuracy']:.4f}" if result["test_accuracy"] is not None else "n/a",
                 result["images_per_second"], result["wall_seconds"])
    return result


def _metrics(model, prepared: data.PreparedData, state, config, cost, preset_name, distribution, replicas) -> dict:
    test = evaluation.evaluate(model, prepared.test.images, prepared.test.labels,
                               prepared.class_names) if prepared.test is not None else None
    val = evaluation.evaluate(model, prepared.val.images, prepared.val.labels,
                              prepared.class_names) if prepared.val is not None else None
    images = sum(config.batch_size * pipeline.steps_per_epoch(len(prepared.train.labels), config.batch_size)
                 for _ in state["history"])
    return {
        "preset": preset_name,
        "data": prepared.source,
        "architecture": config.architecture,
        "class_names": list(prepared.class_names),
        "test_accuracy": test["accuracy"] if test else None,
        "test_loss": test["loss"] if test else None,
        "test_per_class": test["per_class"] if test else None,
        "test_images": test["n_images"] if test else 0,
        "val_accuracy": val["accuracy"] if val else None,
        "val_images": val["n_images"] if val else 0,
        "train_images": int(len(prepared.train.labels)),
        "device_pool": device_pool_record(prepared, config),
        "params": cost.params,
        "params_with_bn_statistics": int(model.count_params()),
        "flops": cost.flops,
        "epochs": int(state["epoch"]),
        "wall_seconds": float(state["wall_seconds"]),
        "train_seconds": float(state["train_seconds"]),
        "images_per_second": images / max(state["train_seconds"], 1e-9),
        "backend": keras.backend.backend(),
        "distribution": distribution,
        "replicas": replicas,
        "config": _config_dict(config),
    }


def device_pool_record(prepared: data.PreparedData, config: CloudTrainConfig) -> dict:
    """What identifies the device pool the cloud model never trained on: how it was drawn and a
    digest of its pixels, so a later stage can check it holds the same images."""
    pool = prepared.device_pool
    digest = data.images_sha256(pool.images) if pool is not None else None
    return {"size": int(len(pool.labels)) if pool is not None else 0, "val_size": config.val_size,
            "seed": config.seed, "sha256": digest, "excluded_from_training": pool is not None}


def describe_difference(old: dict, new: dict) -> str:
    """`key: old -> new` for every field of two identities that differs (config fields one by one)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        if key == "config":
            oc, nc = old.get("config", {}), new.get("config", {})
            diffs += [f"{k}: {oc.get(k)!r} -> {nc.get(k)!r}" for k in sorted(set(oc) | set(nc)) if oc.get(k) != nc.get(k)]
        elif key == "data_digest" and old.get(key) != new.get(key):
            diffs.append("the data's images or labels (other content than the run was made with)")
        elif old.get(key) != new.get(key):
            diffs.append(f"{key}: {str(old.get(key))[:60]!r} -> {str(new.get(key))[:60]!r}")
    return "; ".join(diffs) or "unknown difference"


def load_metrics(out_dir: str) -> dict:
    with open(os.path.join(out_dir, METRICS_FILE)) as f:
        return json.load(f)


__all__ = ["build_and_compile", "load_metrics", "train_and_evaluate"]
