"""The seed paper's never-seen transfer: a student distilled from the cloud model on images of a
few classes, with no label at all, then tested on the classes of which it saw no image."""

from __future__ import annotations

import os

import keras
import numpy as np
from absl import logging

from edgekt import data, models
from edgekt.data import pipeline
from edgekt.device_learning.config import STUDENTS, DeviceLearningConfig, NeverSeenSplit
from edgekt.device_learning.device_model import data_free_pruned, data_free_pruned_architecture
from edgekt.device_learning.device_runs import DeviceApp, cached, key_of
from edgekt.device_learning.pools import Pools
from edgekt.export import TrainerOptions, export
from edgekt.models import saving
from edgekt.transfer.distiller import TransferConfig
from edgekt.transfer.training import FinetuneConfig, fit_student
from edgekt.errors import UserError

# KD on logits alone, or the seed paper's loss: RMSE between L2-normalised teacher and student
# activation maps at the matching stages, plus RMSE between logits (equal weights).
LOSSES = {
    "kd": lambda t: TransferConfig(ce_weight=0.0, kd_weight=1.0, temperature=t, at_weight=0.0),
    "paper": lambda t: TransferConfig(ce_weight=0.0, kd_weight=0.0, at_weight=0.0, feature_rmse_weight=1.0,
                                      logit_rmse_weight=1.0),
}


def student_model(kind: str, teacher: keras.Model, images: np.ndarray, target_params_ratio: float,
                  num_classes: int, seed: int) -> keras.Model:
    """"pruned": the cloud model's architecture pruned without data (L1) to the device budget,
    re-initialised; "pruned_cloud_weights": the same pruned model keeping the cloud's weights
    (which learned every class: its lineage says so); "pruned_cloud_weights_bn": that model
    with only its batch norms trained (scales, offsets and statistics): the cloud's filters and
    classifier, rows of the never-seen classes included, stay as they are; "wrn-16-1": WRN-16-1
    from scratch, normalised with its own images' statistics."""
    if kind == "pruned":
        return data_free_pruned_architecture(teacher, target_params_ratio, num_classes, seed=seed)
    if kind in ("pruned_cloud_weights", "pruned_cloud_weights_bn"):
        if int(teacher.output_shape[-1]) != num_classes:
            raise UserError(f"cloud model: has {teacher.output_shape[-1]} outputs, the student needs {num_classes}; "
                            "pass the cloud model trained on these classes")
        student = data_free_pruned(teacher, target_params_ratio)
        if kind == "pruned_cloud_weights_bn":
            set_trainable(student, lambda layer: isinstance(layer, keras.layers.BatchNormalization))
        return student
    if kind == "wrn-16-1":
        keras.utils.set_random_seed(seed)
        mean, std = pipeline.channel_stats(images)
        return models.wrn(16, 1, num_classes=num_classes, mean=mean, std=std)
    raise ValueError(f"unknown student; expected one of {STUDENTS}. Received: {kind!r}")


def set_trainable(model: keras.Model, which) -> keras.Model:
    """Marks the layers for which `which(layer)` holds trainable and the others frozen."""
    for layer in model.layers:
        layer.trainable = bool(which(layer))
    return model


def training_images(pools: Pools, split: NeverSeenSplit, config: DeviceLearningConfig) -> np.ndarray:
    """The student's images: `never_seen_per_class` device-pool images of each training class."""
    names = list(pools.class_names)
    per_class = []
    for c in split.train:
        images = pools.device.images(c)
        if len(images) < config.never_seen_per_class:
            raise data.DataError(f"class {c!r}: has {len(images)} device-pool images, the never-seen transfer needs "
                                 f"{config.never_seen_per_class}; raise the cloud's --device_pool_size")
        pick = np.random.default_rng([len(names), names.index(c)]).permutation(len(images))
        per_class.append(images[np.sort(pick[:config.never_seen_per_class])])
    return np.concatenate(per_class)


def lineage(pools: Pools, split: NeverSeenSplit, config: DeviceLearningConfig, student: str) -> dict:
    """The classes whose images the student reads (recorded by the pools), no labels, and
    where its initial weights come from."""
    pools.reset_reads()
    training_images(pools, split, config)
    read = sorted({c for p in pools.all() for c in p.read}, key=pools.class_names.index)
    pools.reset_reads()
    inherits = student.startswith("pruned_cloud_weights")
    weights = ("the cloud model's, pruned without data (the cloud trained on every class)" if inherits
               else "random initialisation")
    # A student that starts from the cloud's weights (its classifier rows included) has, through
    # them, learned every class from images and labels: its recall is not a never-seen figure.
    return {"images_of": read, "labels_of": [], "teacher": "cloud model (all classes)", "initial_weights": weights,
            "classes_in_initial_weights": list(pools.class_names) if inherits else [],
            "never_seen": not inherits}


def run_one(teacher: keras.Model, pools: Pools, split: NeverSeenSplit, student: str, loss: str,
            config: DeviceLearningConfig, target_params_ratio: float, test_path: str, folder: str,
            app: DeviceApp) -> dict:
    """Distils one student on device-pool images of `split.train` (labels never read) and
    evaluates its exported TFLite model in the device app on the 10-way test set."""
    names = list(pools.class_names)
    never = [c for c in names if c not in split.train]
    images = training_images(pools, split, config)
    # No labels: the label column is a constant the loss never reads (ce_weight = 0).
    unlabelled = data.Split(images, np.zeros(len(images), np.int64), tuple(names))
    model = student_model(student, teacher, images, target_params_ratio, len(names), seed=0)
    transfer = LOSSES[loss](config.never_seen_temperature)
    ft = FinetuneConfig(epochs=config.never_seen_epochs, batch_size=config.never_seen_batch_size,
                        learning_rate=config.never_seen_lr, warmup_epochs=min(1.0, config.never_seen_epochs / 10),
                        precision=config.precision, mix=config.never_seen_mix, seed=0)
    trained, logs = fit_student(model, unlabelled, teacher=teacher, transfer=transfer, config=ft)
    set_trainable(trained, lambda layer: True)  # frozen for the transfer only; the device may train it all
    export_dir = os.path.join(folder, "export")
    export(trained, export_dir, class_names=names, options=TrainerOptions(batch_size=config.device_batch_size),
           quantization="float16")
    saving.save_model(trained, os.path.join(folder, "student.keras"))
    paper_test = list(split.paper_test) or never
    groups = f"seen={','.join(split.train)};never_seen={','.join(never)};paper_test={','.join(paper_test)}"
    result, _ = app("evaluate", f"--model={os.path.join(export_dir, 'model_trainable.tflite')}",
                    f"--data={test_path}", f"--groups={groups}")
    logging.info("never-seen %s, %s, %s: never-seen recall %.4f", split.name, student, loss, result["never_seen_recall"])
    return {"train_classes": list(split.train), "never_seen_classes": never, "student": student, "loss": loss,
            "params": int(trained.count_params()), "never_seen_recall": result["never_seen_recall"],
            "seen_recall": result["seen_recall"], "accuracy": result["accuracy"],
            "paper_test_classes": paper_test, "paper_test_recall": result["paper_test_recall"],
            "per_class": result["per_class"], "confusion": result["confusion"],
            "final_loss": logs[-1].get("loss") if logs else None,
            "lineage": lineage(pools, split, config, student)}


def run_all(teacher: keras.Model, pools: Pools, config: DeviceLearningConfig, target_params_ratio: float,
            test_path: str, out_dir: str, app: DeviceApp, settings_key: str) -> dict:
    """Every (split, student, loss) of the config; {split name: {student: {loss: record}}}."""
    out: dict = {}
    for split in config.never_seen_splits:
        for student in config.students:
            for loss in config.never_seen_losses:
                folder = os.path.join(out_dir, split.name, f"{student}_{loss}")
                os.makedirs(folder, exist_ok=True)
                record = cached(os.path.join(folder, "result.json"), key_of(settings_key, split.train, student, loss),
                                lambda: run_one(teacher, pools, split, student, loss, config, target_params_ratio,
                                                test_path, folder, app))
                # Lineage from the pools' record of reads, also for a cached student.
                record = {**record, "lineage": lineage(pools, split, config, student)}
                out.setdefault(split.name, {}).setdefault(student, {})[loss] = record
    return out
