"""The seed paper's never-seen transfer: a student distilled from the cloud model on training
images of a few classes, with no label at all, then tested on the classes of which it received
no image.

A run is long (200 epochs on 15,000 images), so it saves its state (the student's weights, the
optimiser's slots, the epoch, its learning curve) after every epoch and resumes from it when
started again; the stream of batches is a pure function of (seed, epoch), so a resumed run
equals an uninterrupted one. The never-seen recall is logged every few epochs for the learning
curve; the figure reported is always the last epoch's, measured by the device app on the
exported model.
"""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np
from absl import logging

from edgekt import atomic, data, models
from edgekt.data import pipeline
from edgekt.device_learning.config import STUDENTS, DeviceLearningConfig, NeverSeenRun
from edgekt.device_learning.device_model import data_free_pruned, data_free_pruned_architecture
from edgekt.device_learning.device_runs import DeviceApp, cached, cached_result, key_of
from edgekt.errors import UserError
from edgekt.export import TrainerOptions, export
from edgekt.models import saving
from edgekt.train.cloud import describe_difference
from edgekt.train.optimizers import L2SGD, learning_rate_schedule
from edgekt.transfer.distiller import Distiller, TransferConfig
from tflite_runtime_app.metrics import classification_metrics

# KD on logits (T^2 KL at temperature T); the seed paper's loss as its public code computes it
# (one RMSE over every logit of the batch, plus at each of the three stage outputs one RMSE
# between teacher and student activations L2-normalised over the batch axis, the student's
# channels zero-padded to the teacher's); both summed; and a per-example variant of the paper's
# loss on attention maps (channel means of squared activations), for comparison.
LOSSES = {
    "kd": lambda t: TransferConfig(ce_weight=0.0, kd_weight=1.0, temperature=t, at_weight=0.0),
    "paper": lambda t: TransferConfig(ce_weight=0.0, kd_weight=0.0, at_weight=0.0, paper_rmse_weight=1.0),
    "both": lambda t: TransferConfig(ce_weight=0.0, kd_weight=1.0, temperature=t, at_weight=0.0,
                                     paper_rmse_weight=1.0),
    "paper_attention": lambda t: TransferConfig(ce_weight=0.0, kd_weight=0.0, at_weight=0.0, feature_rmse_weight=1.0,
                                                logit_rmse_weight=1.0),
}
CUTOUT_PIXELS = 16  # DeVries & Taylor's square for CIFAR-10
STATE_FILE = "state.json"
# Raised whenever a change to this module or the augmentation changes what a run computes, so
# that no saved state of the old code is resumed by the new.
STATE_VERSION = 3


def student_model(kind: str, teacher: keras.Model, images: np.ndarray | None, target_params_ratio: float,
                  num_classes: int, seed: int) -> keras.Model:
    """"pruned": the cloud model's architecture pruned without data (L1) to the device budget,
    re-initialised, normalised with its own images' statistics; "pruned_cloud_weights": the same pruned model keeping the cloud's weights
    (which learned every class: its lineage says so); "pruned_cloud_weights_bn": that model
    with only its batch norms trained (scales, offsets and statistics): the cloud's filters and
    classifier, rows of the never-seen classes included, stay as they are; "wrn-16-1": WRN-16-1
    from scratch, normalised with its own images' statistics."""
    if kind == "pruned":
        # Its own images' normalisation: the cloud's constants come from every class's images.
        return data_free_pruned_architecture(teacher, target_params_ratio, num_classes, seed=seed,
                                             mean_std=pipeline.channel_stats(images))
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


def transfer_set(train: data.Split, run: NeverSeenRun) -> tuple[np.ndarray, list[str]]:
    """The student's images: the training images of `run.split.train` (all, or `run.per_class`
    of each drawn with a fixed seed), class by class; and the classes they belong to. Only the
    label column of the training split is read to choose them; no label reaches the student.

    Raises:
      data.DataError: a class is missing, or has fewer images than `run.per_class`.
    """
    names = list(train.class_names)
    chosen, read = [], []
    for c in run.split.train:
        if c not in names:
            raise data.DataError(f"never-seen split {run.split.name}: class {c!r} is not in the data ({names}); "
                                 "pass CIFAR-10 or change the split")
        idx = np.flatnonzero(train.labels == names.index(c))
        if run.per_class is not None:
            if len(idx) < run.per_class:
                raise data.DataError(f"class {c!r}: has {len(idx)} training images, the never-seen run needs "
                                     f"{run.per_class}; lower per_class")
            idx = np.sort(np.random.default_rng([len(names), names.index(c)]).permutation(idx)[:run.per_class])
        chosen.append(idx)
        read += sorted({names[int(label)] for label in train.labels[idx]}, key=names.index)
    return train.images[np.concatenate(chosen)], read


def lineage(run: NeverSeenRun, images_of: list[str], class_names) -> dict:
    """Which classes' images the student read, which labels (none), and where its weights come
    from. A student that starts from the cloud's weights (its classifier rows included) has,
    through them, learned every class from images and labels: its recall is not a never-seen
    figure."""
    inherits = run.inherits_cloud_weights
    weights = {"wrn-16-1": "random initialisation; input normalisation from its own images",
               "pruned": "random initialisation; input normalisation from its own images; its channel counts are the "
                         "cloud's pruned without data (L1 norms of the cloud's weights)"}.get(
        run.student, "the cloud model's, pruned without data (the cloud trained on every class)")
    return {"images_of": list(images_of), "labels_of": [], "teacher": "cloud model (all classes)",
            "initial_weights": weights, "classes_in_initial_weights": list(class_names) if inherits else [],
            "bn_statistics": "the student's own, from its transfer-set images (augmented) during training",
            "model_selection": "none: the last epoch's weights; test images only measure (learning curve, final)",
            "never_seen": not inherits}


def _groups(run: NeverSeenRun, names: list[str]) -> dict[str, list[str]]:
    never = [c for c in names if c not in run.split.train]
    return {"seen": list(run.split.train), "never_seen": never, "paper_test": list(run.split.paper_test) or never}


class _EpochState(keras.callbacks.Callback):
    """After every epoch: history row, the learning-curve point when due, then the state."""

    def __init__(self, folder: str, state: dict, student: keras.Model, images_per_epoch: int, curve_every: int,
                 epochs: int, evaluate):
        super().__init__()
        self.folder, self.state, self.student = folder, state, student
        self.images_per_epoch, self.curve_every, self.epochs, self.evaluate = (images_per_epoch, curve_every, epochs,
                                                                                evaluate)
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        done = epoch + 1
        self.state["history"].append({"epoch": done, "seconds": seconds,
                                      "images_per_second": self.images_per_epoch / max(seconds, 1e-9),
                                      **{k: float(v) for k, v in (logs or {}).items()}})
        self.state["train_seconds"] += seconds
        if done % self.curve_every == 0 or done == self.epochs:
            point = {"epoch": done, **self.evaluate(saving.float32_copy(self.student))}
            self.state["curve"].append(point)
            logging.info("never-seen curve, epoch %d: never-seen recall %.4f, seen recall %.4f", done,
                         point["never_seen"], point["seen"])
        self.state["epoch"] = done
        save_state(self.folder, self.student, self.model.optimizer, self.state)


def save_state(folder: str, student: keras.Model, optimizer, state: dict) -> None:
    """Writes the weights and optimiser slots, then the state naming them (each atomically), so
    a kill at any point leaves a complete earlier state."""
    weights_file = f"weights-{int(state['epoch']):04d}.npz"
    arrays = {f"w{i}": np.asarray(v) for i, v in enumerate(student.get_weights())}
    arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)})
    atomic.write_with(os.path.join(folder, weights_file), lambda t: np.savez(t, **arrays), suffix=".npz")
    atomic.write_json(os.path.join(folder, STATE_FILE), {**state, "weights_file": weights_file})
    for name in os.listdir(folder):
        if name.startswith("weights-") and name.endswith(".npz") and name != weights_file:
            try:
                os.remove(os.path.join(folder, name))
            except OSError as e:
                logging.warning("could not remove old never-seen state %s: %s", name, e)


def read_state(folder: str, identity: dict) -> dict | None:
    """The saved state of the same run (same identity), or None to start afresh."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable never-seen state ({e}); remove {folder} to start that run over") from e
    if not isinstance(state, dict) or state.get("identity") != identity:
        aside = f"{folder}.superseded-{time.strftime('%Y%m%d-%H%M%S')}"
        logging.warning("%s: a state of other settings (%s); moved to %s, starting that run over", path,
                        describe_difference(state.get("identity") if isinstance(state, dict) else {}, identity), aside)
        os.replace(folder, aside)
        os.makedirs(folder)
        return None
    if not os.path.isfile(os.path.join(folder, str(state.get("weights_file")))):
        raise UserError(f"{path}: names {state.get('weights_file')!r}, which is missing; remove {folder} to start "
                        "that run over")
    return state


def train_student(run: NeverSeenRun, teacher: keras.Model, images: np.ndarray, test: data.Split,
                  config: DeviceLearningConfig, target_params_ratio: float, folder: str, identity: dict,
                  callbacks: tuple = ()) -> tuple[keras.Model, dict]:
    """Distils (or resumes) one student; returns (the float32 student, its state).

    Args:
      run: the run.
      teacher: the cloud model (all classes).
      images: the transfer set (no labels).
      test: the 10-way test split, read only for the learning curve.
      config: batch size, learning rate, temperature, precision, curve period.
      target_params_ratio: the device budget of the "pruned" students.
      folder: where the state lives.
      identity: what the state must match to be resumed.
      callbacks: Keras callbacks run after each epoch's state is written.
    """
    os.makedirs(folder, exist_ok=True)
    names = list(test.class_names)
    state = read_state(folder, identity)
    student = student_model(run.student, teacher, images, target_params_ratio, len(names), seed=0)
    work = saving.with_dtype_policy(student, config.precision)
    distiller = Distiller(work, saving.with_dtype_policy(teacher, config.precision),
                          LOSSES[run.loss](config.never_seen_temperature))
    steps = pipeline.steps_per_epoch(len(images), config.never_seen_batch_size)
    if steps < 1:
        raise data.DataError(f"never-seen run {run.name}: {len(images)} images, fewer than one batch of "
                             f"{config.never_seen_batch_size}; lower never_seen_batch_size")
    lr = learning_rate_schedule("cosine", config.never_seen_lr, run.epochs * steps)
    distiller.compile(optimizer=L2SGD(learning_rate=lr, momentum=0.9, nesterov=True, l2=5e-4), jit_compile=False)
    distiller.optimizer.build(distiller.trainable_variables)
    if state is not None:
        with np.load(os.path.join(folder, state["weights_file"])) as saved:
            work.set_weights([saved[f"w{i}"] for i in range(len(work.weights))])
            for i, v in enumerate(distiller.optimizer.variables):
                v.assign(saved[f"o{i}"])
        logging.info("never-seen %s: resuming at epoch %d/%d", run.name, state["epoch"], run.epochs)
    else:
        state = {"identity": identity, "epoch": 0, "history": [], "curve": [], "train_seconds": 0.0}
    groups = _groups(run, names)

    def evaluate(model: keras.Model) -> dict:
        logits = model.predict(test.images, batch_size=500, verbose=0)
        m = classification_metrics(logits, test.labels, names, groups)
        return {k: m[f"{k}_recall"] for k in groups} | {"accuracy": m["accuracy"], "per_class": m["per_class"]}

    start = int(state["epoch"])
    if start < run.epochs:
        ds = pipeline.train_dataset(images, np.zeros(len(images), np.int64), batch_size=config.never_seen_batch_size,
                                    num_classes=len(names), epochs=run.epochs, start_epoch=start, seed=0,
                                    augment=run.augment != "none", policy=run.augment == "policy_cutout",
                                    cutout=CUTOUT_PIXELS if run.augment == "policy_cutout" else 0, mix=run.mix)
        recorder = _EpochState(folder, state, work, steps * config.never_seen_batch_size,
                               config.never_seen_curve_every, run.epochs, evaluate)
        distiller.fit(ds, epochs=run.epochs, initial_epoch=start, steps_per_epoch=steps, verbose=0, shuffle=False,
                      callbacks=[recorder, *callbacks])
    return saving.float32_copy(work), state


def run_one(teacher: keras.Model, splits: data.DataSplits, run: NeverSeenRun, config: DeviceLearningConfig,
            target_params_ratio: float, test_path: str, folder: str, app: DeviceApp, identity: dict) -> dict:
    """Distils one student on its transfer set (no label read) and evaluates its exported TFLite
    model in the device app on the 10-way test set."""
    names = list(splits.class_names)
    images, read = transfer_set(splits["train"], run)
    started = time.perf_counter()
    identity = {**identity, "transfer_set": data.images_sha256(images)}
    trained, state = train_student(run, teacher, images, splits["test"], config, target_params_ratio,
                                   os.path.join(folder, "state"), identity)
    set_trainable(trained, lambda layer: True)  # frozen for the transfer only; the device may train it all
    export_dir = os.path.join(folder, "export")
    export(trained, export_dir, class_names=names, options=TrainerOptions(batch_size=config.device_batch_size),
           quantization="float16")
    saving.save_model(trained, os.path.join(folder, "student.keras"))
    groups = _groups(run, names)
    spec = ";".join(f"{g}={','.join(groups[g])}" for g in ("seen", "never_seen", "paper_test"))
    result, _ = app("evaluate", f"--model={os.path.join(export_dir, 'model_trainable.tflite')}",
                    f"--data={test_path}", f"--groups={spec}")
    logging.info("never-seen %s: never-seen recall %.4f (device app, epoch %d)", run.name,
                 result["never_seen_recall"], run.epochs)
    train_seconds = state["train_seconds"]
    return {"split": run.split.name, "train_classes": list(run.split.train), "never_seen_classes": groups["never_seen"],
            "student": run.student, "loss": run.loss, "augment": run.augment, "mix": run.mix,
            "per_class_images": run.per_class, "epochs": run.epochs, "table": run.table, "variant": run.variant,
            "transfer_images": int(len(images)), "params": int(trained.count_params()),
            "never_seen_recall": result["never_seen_recall"], "seen_recall": result["seen_recall"],
            "accuracy": result["accuracy"], "paper_test_classes": groups["paper_test"],
            "paper_test_recall": result["paper_test_recall"], "per_class": result["per_class"],
            "confusion": result["confusion"], "evaluated_by": "device app, exported TFLite model (float16 weights)",
            "curve": state["curve"], "final_loss": state["history"][-1].get("loss") if state["history"] else None,
            "train_seconds": train_seconds,
            "images_per_second": len(images) // config.never_seen_batch_size * config.never_seen_batch_size
            * run.epochs / max(train_seconds, 1e-9),
            "wall_seconds_this_session": time.perf_counter() - started,
            "lineage": lineage(run, read, names)}


def run_all(teacher: keras.Model, splits: data.DataSplits, config: DeviceLearningConfig, target_params_ratio: float,
            test_path: str, out_dir: str, app: DeviceApp, train_key: str, result_key: str,
            shard: tuple[int, int] | None = None) -> list[dict | None]:
    """Every run of `config.never_seen_runs`, in order; each resumes from its saved state.

    A saved state is resumed when its identity matches: this code's STATE_VERSION, `train_key`
    (what changes training: teacher, optimisation settings), the run and its transfer set's
    hash; a result is reused when `result_key` (training plus export and evaluation settings and
    the test set) matches too. With `shard=(k, n)` only the runs of index k modulo n are
    trained; another run's record is read if it has finished (another process's shard), else it
    is None (pending)."""
    out = []
    for i, run in enumerate(config.never_seen_runs):
        folder = os.path.join(out_dir, run.split.name, f"{run.student}_{run.loss}_{run.variant}")
        key = key_of(result_key, run.name)
        if shard is not None and i % shard[1] != shard[0]:
            out.append(cached_result(os.path.join(folder, "result.json"), key))
            continue
        os.makedirs(folder, exist_ok=True)
        identity = {"version": STATE_VERSION, "train": train_key, "run": run.name}
        out.append(cached(os.path.join(folder, "result.json"), key,
                          lambda: run_one(teacher, splits, run, config, target_params_ratio, test_path, folder, app,
                                          identity)))
    return out

