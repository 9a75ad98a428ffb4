"""Runs the methods on the device app (a separate process without TensorFlow) for one class
split and seed, with the same images, replay buffers, epoch cap, stopping rule and time
accounting for every method."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Callable

import numpy as np

from edgekt import atomic
from edgekt.device_learning.config import ClassSplit, DeviceLearningConfig
from edgekt.device_learning.methods import METHODS, Method
from edgekt.device_learning.pools import DeviceData

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class DeviceApp:
    """`python -m tflite_runtime_app ...` in a separate process; returns (result, wall seconds).

    The wall time is the whole process: start-up, model and data loading, every validation,
    every epoch and every checkpoint write.
    """

    def __init__(self, python: str = sys.executable, threads: int = 1):
        self.python, self.threads = python, threads

    def __call__(self, *args: str) -> tuple[dict, float]:
        env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        start = time.perf_counter()
        proc = subprocess.run([self.python, "-m", "tflite_runtime_app", *args, f"--threads={self.threads}", "--quiet"],
                              capture_output=True, text=True, env=env, cwd=REPO_ROOT)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"device app {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def key_of(*parts) -> str:
    """A short digest of what a cached result depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached(path: str, key: str, compute: Callable[[], dict]) -> dict:
    """`compute()` unless `path` holds a result made with the same `key`; written atomically."""
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved.get("key") == key:
            return saved["result"]
    result = compute()
    atomic.write_json(path, {"key": key, "result": result})
    return result


def _save_npz(path: str, **arrays) -> str:
    atomic.write_with(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")
    return path


@dataclasses.dataclass(frozen=True)
class DeviceFiles:
    """The .npz files the device app reads for one split and seed."""

    new: str
    val: str
    replay_old: str
    replay_all: str
    incremental_soft: str
    unseen_val: str
    unseen_soft: str
    unseen_argmax: str
    unseen_true: str


def write_device_files(folder: str, dd: DeviceData, split: ClassSplit, cloud_probs: Callable[[np.ndarray], np.ndarray],
                       config: DeviceLearningConfig) -> DeviceFiles:
    """Writes the device's data. `cloud_probs(images)` gives the cloud's soft labels at the
    configured temperature, columns in the device's class order (what the cloud would send)."""
    os.makedirs(folder, exist_ok=True)
    names = np.asarray(list(split.device_classes))
    k = len(names)

    def labelled(name, images, labels):
        return _save_npz(os.path.join(folder, name), images=images, labels=labels)

    def soft(name, images, targets):
        return _save_npz(os.path.join(folder, name), images=images, soft_targets=targets.astype(np.float32),
                         temperature=np.float32(config.temperature), class_names=names)

    replay_all_x = np.concatenate([dd.replay_images, dd.kept_new_images])
    replay_all_y = np.concatenate([dd.replay_labels, dd.kept_new_labels])
    # Ours, incremental: the labels of new images mixed with the cloud's view of them; the
    # replayed images carry the cloud's soft labels (learning without forgetting).
    inc_x = np.concatenate([dd.new_images, dd.replay_images])
    inc_t = cloud_probs(inc_x)
    n_new = len(dd.new_labels)
    inc_t[:n_new] = (1 - config.label_mix) * np.eye(k, dtype=np.float32)[dd.new_labels] + config.label_mix * inc_t[:n_new]
    unseen_probs = cloud_probs(dd.unseen_images)
    held_out_argmax = cloud_probs(dd.unseen_val_images).argmax(axis=1)
    unseen_soft_x = np.concatenate([dd.unseen_images, replay_all_x])
    return DeviceFiles(
        new=labelled("new.npz", dd.new_images, dd.new_labels),
        val=labelled("val.npz", dd.val_images, dd.val_labels),
        replay_old=labelled("replay_old.npz", dd.replay_images, dd.replay_labels),
        replay_all=labelled("replay_all.npz", replay_all_x, replay_all_y),
        incremental_soft=soft("incremental_soft.npz", inc_x, inc_t),
        # One validation set for the unseen update, the same for every method: labelled old
        # and new images, and held-out unseen images scored by agreement with the cloud.
        unseen_val=labelled("unseen_val.npz", np.concatenate([dd.val_images, dd.unseen_val_images]),
                            np.concatenate([dd.val_labels, held_out_argmax])),
        unseen_soft=soft("unseen_soft.npz", unseen_soft_x,
                         np.concatenate([unseen_probs, cloud_probs(replay_all_x)])),
        unseen_argmax=labelled("unseen_argmax.npz", dd.unseen_images, unseen_probs.argmax(axis=1)),
        unseen_true=labelled("unseen_true.npz", dd.unseen_images, dd.unseen_labels),
    )


def run_seed(model_path: str, test_path: str, files: DeviceFiles, split: ClassSplit, config: DeviceLearningConfig,
             seed: int, folder: str, app: DeviceApp, settings_key: str) -> dict:
    """Runs every method for one split and seed; returns {method: record}.

    A record holds the test metrics before and after each update (`updates`), the final ones,
    and the on-device seconds of each stage. Stages shared by methods (the labelled
    incremental update of fine-tuning, pseudo-labels and the bound) run once, and each
    method is charged their time.
    """
    groups = ";".join(f"{g}={','.join(c)}" for g, c in {**split.groups(),
                                                       "seen": list(split.old + split.new)}.items())
    ck_dir = os.path.join(folder, "checkpoints")
    os.makedirs(ck_dir, exist_ok=True)

    def evaluate(checkpoint: str | None) -> dict:
        args = ["evaluate", f"--model={model_path}", f"--data={test_path}", f"--groups={groups}"]
        if checkpoint:
            args.append(f"--checkpoint={checkpoint}")
        return app(*args)[0]

    def learning(val_path: str, replay_path: str, checkpoint: str, init: str | None) -> list[str]:
        args = [f"--model={model_path}", f"--checkpoint={checkpoint}", "--restart", f"--epochs={config.device_epochs}",
                f"--lr={config.device_lr}", f"--patience={config.patience}", f"--min_delta={config.min_delta}",
                f"--seed={seed}", f"--replay={replay_path}", f"--replay_ratio={config.replay_ratio}",
                f"--val_data={val_path}"]
        return args + ([f"--init={init}"] if init else [])

    def stage(chain: tuple[str, ...]) -> dict:
        """One update, `chain` = the kinds of the updates so far (the last one is run here)."""
        name = ">".join(chain)
        checkpoint = os.path.join(ck_dir, name.replace(">", "__").replace("+", "_") + ".npz")
        init = None
        if len(chain) > 1:
            init = stage(chain[:-1])["checkpoint"]
        kind = chain[-1]

        def compute():
            if kind == "labels":
                args = ["learn", f"--data={files.new}", *learning(files.val, files.replay_old, checkpoint, init)]
            elif kind == "labels+cloud":
                args = ["learn-unseen", f"--soft_labels={files.incremental_soft}",
                        *learning(files.val, files.replay_old, checkpoint, init)]
            elif kind == "cloud_soft":
                args = ["learn-unseen", f"--soft_labels={files.unseen_soft}",
                        *learning(files.unseen_val, files.replay_all, checkpoint, init)]
            else:
                data = files.unseen_argmax if kind == "cloud_argmax" else files.unseen_true
                args = ["learn", f"--data={data}", *learning(files.unseen_val, files.replay_all, checkpoint, init)]
            result, wall = app(*args)
            return {"app": result, "device_seconds": wall, "checkpoint": checkpoint, "test": evaluate(checkpoint)}

        return cached(os.path.join(folder, f"stage_{name.replace('>', '__')}.json"),
                      key_of(settings_key, chain, seed), compute)

    base = cached(os.path.join(folder, "stage_base.json"), key_of(settings_key, "base", seed),
                  lambda: {"test": evaluate(None)})
    out = {}
    for method in METHODS.values():
        out[method.name] = method_record(method, base, [stage(tuple(k for _, k in method.stages[:i + 1]))
                                                         for i in range(len(method.stages))])
    return out


def method_record(method: Method, base: dict, stages: list[dict]) -> dict:
    """Final test metrics, metrics per update and on-device time of one method."""
    names = ["before"] + [s for s, _ in method.stages]
    tests = [base["test"]] + [s["test"] for s in stages]
    final = tests[-1]
    ran_unseen = method.unseen is not None
    return {
        "old_recall": final["old_recall"],
        "new_recall": final["new_recall"],
        # A method that never runs the unseen update has no unseen-class result: not a zero.
        "unseen_recall": final["unseen_recall"] if ran_unseen else None,
        "unseen_precision": final["unseen_precision"] if ran_unseen else None,
        "accuracy": final["accuracy"],
        "seen_accuracy": final["seen_recall"],
        "total_device_seconds": float(sum(s["device_seconds"] for s in stages)),
        "stage_seconds": {n: s["device_seconds"] for n, s in zip(names[1:], stages)},
        "time_to_best_seconds": {n: s["app"]["time_to_converge_seconds"] for n, s in zip(names[1:], stages)},
        "epochs": {n: s["app"]["epochs"] for n, s in zip(names[1:], stages)},
        "updates": [{"after": n, "old": t["old_recall"], "new": t["new_recall"], "unseen": t["unseen_recall"],
                     "accuracy": t["accuracy"]} for n, t in zip(names, tests)],
        "history": {n: s["app"]["history"] for n, s in zip(names[1:], stages)},
        "confusion": final["confusion"],
        "ran_unseen_stage": ran_unseen,
    }
