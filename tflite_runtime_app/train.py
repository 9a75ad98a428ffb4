"""The on-device learning loop: shuffled fixed-size batches (a short last batch is padded and
masked), a cosine learning-rate schedule, optional replay of old-class examples, a plateau rule
that stops training and reports time-to-converge, and resumable checkpoints.

Batches are a pure function of (seed, epoch, step), so a resumed run repeats exactly the
steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
import time
from typing import Callable

import numpy as np

from tflite_runtime_app import checkpoint as ckpt
from tflite_runtime_app.errors import UserError
from tflite_runtime_app.runner import DeviceModel, NonFiniteOutputs


# SGD rates above 10 are typing mistakes; below 1e-8 a float32 weight does not move.
LEARNING_RATE_RANGE = (1e-8, 10.0)

class TrainingError(UserError):
    """Training diverged (NaN or inf loss or weights); the last good checkpoint is kept."""


AUGMENTATIONS = ("none", "flip", "flip_crop")


def augment(images: np.ndarray, kind: str, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """A batch [N, H, W, C] with random horizontal flips ("flip"), and shifts of up to `pad`
    pixels with zero padding ("flip_crop"); "none" returns it unchanged."""
    if kind == "none" or len(images) == 0:
        return images
    out = np.array(images, copy=True)
    flip = rng.random(len(out)) < 0.5
    out[flip] = out[flip, :, ::-1]
    if kind == "flip_crop":
        n, h, w = out.shape[:3]
        padded = np.pad(out, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        dy, dx = rng.integers(0, 2 * pad + 1, n), rng.integers(0, 2 * pad + 1, n)
        out = np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return out


@dataclasses.dataclass(frozen=True)
class LearnConfig:
    """The loop's settings.

    Attributes:
      max_epochs: upper bound on epochs.
      learning_rate: peak learning rate (cosine decay to 10% of it over max_epochs).
      patience: stop after this many epochs without a validation gain of `min_delta`.
      min_delta: the smallest gain that counts.
      replay_ratio: with a replay buffer, the share of each batch taken from it (labelled
        learning), or replay steps per new-data step (unseen-category learning).
      checkpoint_every: steps between checkpoints (one is also written after every epoch).
      seed: data order.
    """

    max_epochs: int = 20
    learning_rate: float = 0.01
    patience: int = 3
    min_delta: float = 0.002
    replay_ratio: float = 0.25
    checkpoint_every: int = 50
    seed: int = 0
    augment: str = "none"

    def __post_init__(self):
        if self.max_epochs < 1 or self.patience < 1 or self.checkpoint_every < 1:
            raise ValueError("max_epochs, patience and checkpoint_every must be >= 1")
        if not 0 <= self.replay_ratio < 1:
            raise ValueError(f"replay_ratio must be in [0, 1). Received: {self.replay_ratio}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {AUGMENTATIONS}. Received: {self.augment!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0. Received: {self.learning_rate}")


@dataclasses.dataclass
class Task:
    """What one step trains on and how progress is judged.

    kind "labelled": `targets` are int labels, steps use the `train` signature, validation
    is accuracy. kind "soft": `targets` are soft labels at `temperature`, steps use
    `distill`. Validation is accuracy when `val_targets` are int labels, top-1 agreement when
    they are soft labels.
    """

    kind: str
    images: np.ndarray
    targets: np.ndarray
    val_images: np.ndarray
    val_targets: np.ndarray
    temperature: float = 1.0
    replay_images: np.ndarray | None = None
    replay_labels: np.ndarray | None = None
    val_groups: list[list[int]] | None = None


def _lr(config: LearnConfig, progress: float) -> float:
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def validation_score(model: DeviceModel, task: Task) -> float:
    """Accuracy (labelled) or agreement with the soft labels' top-1 (soft)."""
    pred = model.logits(task.val_images).argmax(axis=1)
    truth = task.val_targets if task.val_targets.ndim == 1 else task.val_targets.argmax(axis=1)
    correct = pred == truth
    if not task.val_groups:
        return float(correct.mean())
    scores = [correct[np.isin(truth, group)].mean() for group in task.val_groups if np.isin(truth, group).any()]
    return float(np.mean(scores))


class Progress:
    """One status line: epoch, step, loss, accuracy, validation, elapsed, ETA."""

    def __init__(self, stream=sys.stderr, quiet: bool = False):
        self.stream, self.quiet = stream, quiet
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def step(self, epoch, epochs, step, steps, loss, acc, elapsed, eta):
        if self.quiet or not self.tty:
            return
        acc_text = f" acc {acc:.3f}" if acc is not None else ""
        self.stream.write(f"\repoch {epoch + 1}/{epochs} step {step}/{steps} loss {loss:.4f}{acc_text} "
                          f"| {_clock(elapsed)} elapsed, ETA {_clock(eta)}   ")
        self.stream.flush()

    def epoch(self, epoch, epochs, loss, val, best, elapsed, eta):
        if self.quiet:
            return
        self.stream.write(("\r" if self.tty else "") + f"epoch {epoch + 1}/{epochs} loss {loss:.4f} val {val:.4f} "
                          f"(best {best:.4f}) | {_clock(elapsed)} elapsed, ETA {_clock(eta)}\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def _batches(n: int, size: int, seed: int, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [order[i:i + size] for i in range(0, n, size)]


def learn(model: DeviceModel, task: Task, config: LearnConfig, checkpoint_path: str, *, restart: bool = False,
          progress: Progress | None = None, on_step: Callable[[int], None] | None = None,
          prepare: Callable[[DeviceModel], dict] | None = None, learned_classes: list[str] | None = None) -> dict:
    """Trains until the validation score plateaus (or `max_epochs`), checkpointing as it goes.

    Resumes from `checkpoint_path` when it exists (unless `restart`); at the end the best
    weights (by validation) are restored and saved. A fresh run first calls `prepare(model)`
    (e.g. a head initialiser; its time counts) and records what it returns. The checkpoint
    keeps `learned_classes` (the classes the weights have learned, after this run).

    Returns:
      A summary: time_to_converge_seconds, total_seconds, epochs, steps, best/initial
      validation score, converged, history.
    """
    progress = progress or Progress()
    b = model.batch_size
    use_replay = task.replay_images is not None and len(task.replay_images) > 0 and config.replay_ratio > 0
    replay_slots = int(round(b * config.replay_ratio)) if (use_replay and task.kind == "labelled") else 0
    new_per_batch = b - replay_slots
    steps_per_epoch = math.ceil(len(task.images) / new_per_batch)
    total_steps = steps_per_epoch * config.max_epochs
    state = None
    best_weights = None
    if os.path.exists(checkpoint_path) and not restart:
        weights, state, best_weights = ckpt.load(checkpoint_path, model.weight_shapes)
        task_id = _task_id(task, config, b, getattr(model, "path", None))
        if state.get("task") != task_id:
            raise ckpt.CheckpointError(f"{checkpoint_path}: made for other data or settings (differs: "
                                       f"{_differences(state.get('task'), task_id)}); use --restart to start over "
                                       "(it is kept until a new checkpoint replaces it), or pass another --checkpoint")
        model.set_weights(weights)
    if state is None:
        t0 = time.perf_counter()  # preparing and the first validation are part of the run's time
        prepared = prepare(model) if prepare is not None else None
        initial = validation_score(model, task)
        state = {"task": _task_id(task, config, b, getattr(model, "path", None)), "epoch": 0, "step": 0, "global_step": 0,
                 "elapsed": time.perf_counter() - t0,
                 "best": initial, "best_epoch": 0, "best_elapsed": 0.0, "bad_epochs": 0, "initial": initial,
                 "history": [], "done": False, "epoch_loss": 0.0, "epoch_count": 0, "prepared": prepared,
                 "learned_classes": learned_classes}
        best_weights = model.get_weights()
    resumed_at_step = int(state["global_step"])
    start = time.perf_counter() - state["elapsed"]

    def diverged(what: str, epoch: int, step: int) -> TrainingError:
        kept = (f"{checkpoint_path} keeps the last good weights" if os.path.exists(checkpoint_path)
                else "no checkpoint was written")
        if state["global_step"] == 0:  # no step succeeded: the starting weights first, then the rate
            lower = config.learning_rate / 10
            rate = (f", or with a lower rate (e.g. --lr={lower:g}) if --lr={config.learning_rate:g} was high"
                    if lower >= LEARNING_RATE_RANGE[0] else "")
            return TrainingError(f"learn: {what} at the first step, so the starting weights (the model's, or --init's) "
                                 f"are likely broken ({kept}); start from other weights (another --init, or the model "
                                 f"exported again){rate}")
        return TrainingError(f"--lr={config.learning_rate:g}: {what} at epoch {epoch + 1} step {step} (the learning "
                             f"rate is likely too high; {kept}); run again with a lower rate, e.g. "
                             f"--lr={config.learning_rate / 10:g}, and --restart")

    def save():
        weights = model.get_weights()
        for values in (weights, best_weights):
            bad = ckpt.first_non_finite(values)
            if bad is not None:
                raise diverged(f"weight {bad[0]!r} became NaN or inf", state["epoch"], state["step"])
        state["elapsed"] = time.perf_counter() - start
        ckpt.save(checkpoint_path, weights, state, best_weights)

    while not state["done"] and state["epoch"] < config.max_epochs:
        epoch = state["epoch"]
        batches = _batches(len(task.images), new_per_batch, config.seed, epoch)
        for step in range(state["step"], len(batches)):
            idx = batches[step]
            lr = _lr(config, state["global_step"] / max(total_steps, 1))
            rng = np.random.default_rng([config.seed, epoch, step, 1])
            acc = None
            if task.kind == "labelled":
                x, y = task.images[idx], task.targets[idx]
                if replay_slots:
                    r = rng.choice(len(task.replay_images), replay_slots, replace=len(task.replay_images) < replay_slots)
                    x = np.concatenate([x, task.replay_images[r]])
                    y = np.concatenate([y, task.replay_labels[r]])
                loss, acc = model.train_batch(augment(x, config.augment, rng), y, lr)
            else:
                loss = model.distill_batch(augment(task.images[idx], config.augment, rng), task.targets[idx], lr,
                                           task.temperature)
                if use_replay and rng.random() < config.replay_ratio / (1 - config.replay_ratio):
                    r = rng.choice(len(task.replay_images), b, replace=len(task.replay_images) < b)
                    model.train_batch(augment(task.replay_images[r], config.augment, rng), task.replay_labels[r], lr)
            if not np.isfinite(loss):
                raise diverged(f"the loss became {loss}", epoch, step + 1)
            state["step"] = step + 1
            state["global_step"] += 1
            state["epoch_loss"] += loss
            state["epoch_count"] += 1
            elapsed = time.perf_counter() - start
            rate = elapsed / max(state["global_step"], 1)
            progress.step(epoch, config.max_epochs, step + 1, len(batches), loss, acc, elapsed,
                          rate * (total_steps - state["global_step"]))
            if on_step is not None:
                on_step(state["global_step"])
            if state["global_step"] % config.checkpoint_every == 0 and state["step"] < len(batches):
                save()
        try:
            score = validation_score(model, task)
        except NonFiniteOutputs:
            raise diverged("the validation outputs became NaN or inf", epoch, len(batches)) from None
        elapsed = time.perf_counter() - start
        mean_loss = state["epoch_loss"] / max(state["epoch_count"], 1)
        state["history"].append({"epoch": epoch + 1, "loss": mean_loss, "val": score, "elapsed": elapsed})
        if score > state["best"] + config.min_delta or (state["best_epoch"] == 0 and score >= state["best"]):
            state.update(best=score, best_epoch=epoch + 1, best_elapsed=elapsed, bad_epochs=0)
            best_weights = model.get_weights()
        else:
            state["bad_epochs"] += 1
        state.update(epoch=epoch + 1, step=0, epoch_loss=0.0, epoch_count=0)
        if state["bad_epochs"] >= config.patience:
            state["done"] = True
        rate = elapsed / max(state["global_step"], 1)
        progress.epoch(epoch, config.max_epochs, mean_loss, score, state["best"], elapsed,
                       0.0 if state["done"] else rate * (total_steps - state["global_step"]))
        save()
    if not state.get("restored_best"):
        model.set_weights(best_weights)
        state["restored_best"] = True
        state["done"] = True
        save()
    return {
        "converged": state["bad_epochs"] >= config.patience,
        "time_to_converge_seconds": state["best_elapsed"],
        "total_seconds": state["elapsed"],
        "epochs": state["epoch"],
        "steps": state["global_step"],
        "resumed_at_step": resumed_at_step,
        "best_epoch": state["best_epoch"],
        "initial_val": state["initial"],
        "best_val": state["best"],
        "steps_per_epoch": steps_per_epoch,
        "batch_size": b,
        "history": state["history"],
        "prepared": state.get("prepared"),
        "learned_classes": state.get("learned_classes"),
    }


def _task_id(task: Task, config: LearnConfig, batch: int, model_path: str | None = None) -> dict:
    """What a checkpoint must match to be resumed: the model file's bytes, the decoded data
    (images and targets of training, validation and replay, by a digest of their bytes), the
    settings."""
    def digest(a):
        if a is None:
            return None
        a = np.ascontiguousarray(a)
        h = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
        h.update(memoryview(a).cast("B"))
        return h.hexdigest()

    return {"kind": task.kind, "model": _file_digest(model_path), "images": digest(task.images),
            "targets": digest(task.targets), "val": digest(task.val_images), "val_targets": digest(task.val_targets),
            "replay": digest(task.replay_images), "replay_labels": digest(task.replay_labels), "batch": batch,
            "val_groups": task.val_groups,
            "config": dataclasses.asdict(config), "temperature": task.temperature}


_TASK_FIELDS = {"model": "the model file", "images": "the training images", "targets": "the training labels",
                "val": "the validation images", "val_targets": "the validation labels", "replay": "the replay images",
                "replay_labels": "the replay labels", "batch": "the batch size", "val_groups": "the validation groups",
                "config": "the settings", "temperature": "the temperature", "kind": "the command"}


def _file_digest(path: str | None) -> str | None:
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _differences(saved, current: dict) -> str:
    """What differs between a checkpoint's task and this run's, in words."""
    if not isinstance(saved, dict):
        return "what it was made for is not recorded"
    names = [_TASK_FIELDS.get(k, k) for k in current if saved.get(k) != current[k]]
    if isinstance(saved.get("config"), dict) and isinstance(current.get("config"), dict):
        changed = [k for k in current["config"] if saved["config"].get(k) != current["config"][k]]
        if changed:
            names = [n if n != "the settings" else f"the settings ({', '.join(changed)})"
                     for n in names]
    return ", ".join(names) or "nothing"
