"""The transfer stage: a student (a pruned model, or a small architecture from scratch) learns
from the cloud model with composable CE / KD / attention-transfer losses, then is evaluated
and saved with its metrics."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time

import keras
from absl import logging

from edgekt import atomic, data, evaluation, flops, models
from edgekt.data import pipeline
from edgekt.models import saving
from edgekt.transfer.config import TransferStageConfig
from edgekt.transfer.distiller import matching_feature_layers
from edgekt.transfer.training import fit_student
from edgekt.errors import UserError

STUDENT_FILE = "student.keras"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
_WRN_NAME = re.compile(r"^wrn-(\d+)-(\d+)$", re.IGNORECASE)


def check_student(student: str):
    """The `wrn-DEPTH-WIDTH` match of a student name (None for a `.keras` path), checked before
    anything is loaded.

    Raises:
      UserError: neither a `.keras` path nor a buildable WRN name.
    """
    match = _WRN_NAME.match(student.strip())
    if match:
        depth, width = int(match.group(1)), int(match.group(2))
        if depth < 10 or (depth - 4) % 6 or width < 1:
            raise UserError(f"--student={student}: a WRN has depth 6n+4 >= 10 (10, 16, 22, 28, 40, ...) and width "
                            ">= 1; pass e.g. wrn-16-1")
        return match
    if not student.endswith(".keras"):
        raise UserError(f"--student={student}: neither a .keras model file nor wrn-DEPTH-WIDTH; pass a .keras path "
                        "or e.g. wrn-16-1")
    return None


def make_student(student: str, *, num_classes: int, train_images, input_shape=(32, 32, 3), seed: int = 0) -> keras.Model:
    """The student named by `student`: a `.keras` file, or `wrn-DEPTH-WIDTH` for a new WRN
    (random initialisation, input normalisation from `train_images`).

    Raises:
      ValueError: neither a `.keras` path nor a WRN name.
      FileNotFoundError: the `.keras` file is missing.
    """
    match = check_student(student)
    if match:
        keras.utils.set_random_seed(seed)
        mean, std = pipeline.channel_stats(train_images)
        return models.wrn(int(match.group(1)), int(match.group(2)), num_classes=num_classes,
                          input_shape=tuple(input_shape), mean=mean, std=std)
    return saving.load_model(student)


def _evaluate(model, split, class_names, batch) -> dict | None:
    if split is None:
        return None
    return evaluation.evaluate(model, split.images, split.labels, class_names, batch)


def distill(teacher: keras.Model, student: keras.Model, source: str | data.DataSplits, out_dir: str,
            config: TransferStageConfig, *, val_size: int = 5000, split_seed: int = 0, device_pool_size: int = 0,
            preset_name: str | None = None, teacher_path: str | None = None, student_name: str | None = None,
            verbose: int | str = 0) -> dict:
    """Trains `student` on the training split against labels and `teacher`, writes
    `out_dir/student.keras`, `metrics.json` and `history.csv`.

    Validation uses the cloud stage's hold-out (`val_size`, `split_seed`), so the teacher never
    trained on it; the test split is only reported.

    Returns:
      The metrics written to `metrics.json`.

    Raises:
      ValueError: the teacher, student and data disagree on the classes or the image shape.
    """
    start = time.perf_counter()
    splits = source if isinstance(source, data.DataSplits) else data.load(source)
    classes = len(splits.class_names)
    shape = next(tuple(s.images.shape[1:]) for s in splits.values())
    for role, model in (("teacher", teacher), ("student", student)):
        if int(model.output_shape[-1]) != classes:
            raise UserError(f"the {role}: has {model.output_shape[-1]} outputs but the data has {classes} classes "
                            f"({list(splits.class_names)}); pass a {role} trained on the data's classes")
        if tuple(model.input_shape[1:]) != shape:
            raise UserError(f"the {role}: takes images of shape {tuple(model.input_shape[1:])} but the data's are "
                            f"{shape}; pass --resize to resize the images")
    prepared = data.prepare_splits(splits, val_size=val_size, seed=split_seed, train_size=config.train_size,
                                   test_size=config.test_size, device_pool_size=device_pool_size,
                                   batch_size=config.optimization.batch_size)
    transfer = config.loss
    if transfer.at_weight > 0 and transfer.uses_teacher and not matching_feature_layers(student, teacher):
        logging.warning("attention transfer: the student and the teacher share no layer name at equal resolution; "
                        "only the CE and KD terms apply")
    batch = max(config.optimization.batch_size, 256)
    teacher32 = saving.float32_copy(teacher)
    before = {"val": _evaluate(student, prepared.val, prepared.class_names, batch)}
    t0 = time.perf_counter()
    trained, history = fit_student(student, prepared.train, teacher=teacher32, transfer=transfer,
                                   config=config.optimization, verbose=verbose)
    train_seconds = time.perf_counter() - t0
    os.makedirs(out_dir, exist_ok=True)
    student_path = saving.save_model(trained, os.path.join(out_dir, STUDENT_FILE))
    after = {name: _evaluate(trained, split, prepared.class_names, batch)
             for name, split in (("val", prepared.val), ("test", prepared.test))}
    teacher_eval = {name: _evaluate(teacher32, split, prepared.class_names, batch)
                    for name, split in (("val", prepared.val), ("test", prepared.test))}
    cost, teacher_cost = flops.model_cost(trained), flops.model_cost(teacher32)
    pick = lambda result, key="accuracy": None if result is None else result[key]  # noqa: E731
    metrics = {
        "preset": preset_name,
        "data": prepared.source,
        "class_names": list(prepared.class_names),
        "teacher": teacher_path,
        "student": student_name,
        "params": cost.params,
        "flops": cost.flops,
        "teacher_params": teacher_cost.params,
        "teacher_flops": teacher_cost.flops,
        "test_accuracy": pick(after["test"]),
        "val_accuracy": pick(after["val"]),
        "val_accuracy_before": pick(before["val"]),
        "teacher_test_accuracy": pick(teacher_eval["test"]),
        "teacher_val_accuracy": pick(teacher_eval["val"]),
        "test_per_class": pick(after["test"], "per_class"),
        "attention_layers": matching_feature_layers(trained, teacher32) if transfer.at_weight else [],
        "train_images": int(len(prepared.train.labels)),
        "train_seconds": train_seconds,
        "images_per_second": config.optimization.epochs * len(prepared.train.labels) / max(train_seconds, 1e-9),
        "wall_seconds": time.perf_counter() - start,
        "history": history,
        "config": json.loads(json.dumps(dataclasses.asdict(config))),
    }
    atomic.write_csv(os.path.join(out_dir, HISTORY_FILE), [{"epoch": i + 1, **row} for i, row in enumerate(history)])
    atomic.write_json(os.path.join(out_dir, METRICS_FILE), metrics)
    logging.info("wrote %s: %s params, test top-1 %s (val %s -> %s; teacher test %s)", student_path,
                 f"{cost.params:,}", metrics["test_accuracy"], metrics["val_accuracy_before"], metrics["val_accuracy"],
                 metrics["teacher_test_accuracy"])
    return metrics
