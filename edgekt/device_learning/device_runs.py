"""Runs the methods on the device app (a separate process without TensorFlow) for one class
split and seed, with the same images, replay buffers, epoch cap, stopping rule and time
accounting for every method."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from typing import Callable

import numpy as np

from edgekt import atomic
from edgekt.errors import EXIT_USER_ERROR, UserError
from edgekt.device_learning.config import ClassSplit, DeviceLearningConfig
from edgekt.device_learning.methods import ABLATIONS, METHODS, Method
from edgekt.device_learning.pools import DeviceData

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


_PROBE = ("import numpy, PIL\n"
          "from tflite_runtime_app import runner\n"
          "print('runtime', runner.runtime_name())\n")


def check_device_python(python: str, flag: str = "--device_python") -> str:
    """Checks that `python` runs the device app (numpy, Pillow and a TFLite runtime import) before
    hours of work depend on it; returns the runtime it uses.

    Raises:
      UserError: not an executable, or it cannot run the app (names what failed).
    """
    advice = "pass the Python of a venv with numpy, Pillow and ai-edge-litert or tflite-runtime"
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        raise UserError(f"{flag}={python}: not an executable file; {advice}")
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"{flag}={python}: cannot be run ({type(e).__name__}: {e}); {advice}") from e
    said = [line for line in proc.stdout.splitlines() if line.startswith("runtime ")]
    if proc.returncode != 0 or not said:
        last = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"{flag}={python}: does not run the device app ({last[-200:]}); {advice}")
    return said[-1].split(" ", 1)[1]


class DeviceApp:
    """`python -m tflite_runtime_app ...` in a separate process; returns (result, wall seconds).

    The wall time is the whole process: start-up, model and data loading, every validation,
    every epoch and every checkpoint write.
    """

    def __init__(self, python: str = sys.executable, threads: int = 1):
        self.python, self.threads = python, threads

    def __call__(self, *args: str) -> tuple[dict, float]:
        env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        start, cpu_start = time.perf_counter(), _children_cpu()
        proc = subprocess.run([self.python, "-m", "tflite_runtime_app", *args, f"--threads={self.threads}", "--quiet"],
                              capture_output=True, text=True, env=env, cwd=REPO_ROOT)
        wall = time.perf_counter() - start
        if proc.returncode == EXIT_USER_ERROR:  # the device app refused an input, e.g. no interpreter package
            said = [line[len("error: "):] for line in proc.stderr.splitlines() if line.startswith("error: ")]
            raise UserError(f"device app ({self.python} -m tflite_runtime_app {args[0]}): "
                            f"{said[-1] if said else proc.stderr.strip()[-300:]}")
        if proc.returncode != 0:
            raise RuntimeError(f"device app {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        try:
            result = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError) as e:
            raise UserError(f"device app ({self.python} -m tflite_runtime_app {args[0]}): printed no result "
                            f"({proc.stdout.strip()[-200:] or 'no output'}); pass a --device_python that runs the "
                            "device app") from e
        if not isinstance(result, dict):
            raise UserError(f"device app ({self.python} -m tflite_runtime_app {args[0]}): printed "
                            f"{json.dumps(result)[:100]}, not a result; pass a --device_python that runs the device "
                            "app")
        result["process_cpu_seconds"] = _children_cpu() - cpu_start
        return result, wall


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: less sensitive than wall
    time to other work on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def key_of(*parts) -> str:
    """A short digest of what a cached result depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_result(path: str, key: str) -> dict | None:
    """The result saved at `path` if it was made with `key`, else None."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved.get("result") if isinstance(saved, dict) and saved.get("key") == key else None


def cached(path: str, key: str, compute: Callable[[], dict]) -> dict:
    """`compute()` unless `path` holds a result made with the same `key`; written atomically."""
    saved = cached_result(path, key)
    if saved is not None:
        return saved
    result = compute()
    atomic.write_json(path, {"key": key, "result": result})
    return result


def _save_npz(path: str, **arrays) -> str:
    atomic.write_with(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")
    return path


@dataclasses.dataclass(frozen=True)
class DeviceFiles:
    """The .npz files the device app reads for one split and seed. Every training file of a
    stage holds the same images in the same order (the stage's images, then the replay buffer
    repeated to `replay_ratio` of the epoch); only the targets differ between methods."""

    val: str                 # old + new classes, labelled
    unseen_val: str          # the same + held-out unseen images labelled with the cloud's top-1
    incremental_labels: str  # new images + old replay, labels
    incremental_soft: str    # same images: labels mixed with the cloud's soft labels
    unseen_soft: str         # unseen images (cloud soft labels) + old/new replay (labels mixed with the cloud)
    unseen_argmax: str       # unseen images (cloud top-1) + replay (labels)
    unseen_true: str         # unseen images (true labels: the bound) + replay (labels)


def with_replay(images: np.ndarray, labels: np.ndarray, replay_images: np.ndarray, replay_labels: np.ndarray,
                ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """`images` followed by the replay buffer repeated (cyclically) to `ratio` of the result."""
    count = int(round(len(images) * ratio / (1.0 - ratio))) if ratio > 0 else 0
    index = np.arange(count) % max(len(replay_images), 1)
    return (np.concatenate([images, replay_images[index]]), np.concatenate([labels, replay_labels[index]]))


def restrict(probs: np.ndarray, columns: list[int]) -> np.ndarray:
    """`probs` [N, K] with the columns not in `columns` set to 0 and each row renormalised
    over `columns` (a row with no mass there becomes uniform over them)."""
    out = np.zeros_like(probs, dtype=np.float32)
    kept = probs[:, columns].astype(np.float32)
    total = kept.sum(axis=1, keepdims=True)
    out[:, columns] = np.where(total > 0, kept / np.maximum(total, 1e-30), 1.0 / len(columns))
    return out


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

    def mixed(images, labels, classes):
        """Ours, where the device has labels: labels mixed with the cloud's view of the images,
        restricted to `classes` (renormalised) so that no update carries the cloud's opinion
        of classes the device is not learning yet."""
        onehot = np.eye(k, dtype=np.float32)[labels]
        return (1 - config.label_mix) * onehot + config.label_mix * restrict(cloud_probs(images), classes)

    # The incremental update knows of old and new classes only: the cloud's probabilities of the
    # unseen classes are left out of its targets (they would teach unseen classes early).
    known = [names.tolist().index(c) for c in split.old + split.new]
    inc_x, inc_y = with_replay(dd.new_images, dd.new_labels, dd.replay_images, dd.replay_labels, config.replay_ratio)
    replay_x = np.concatenate([dd.replay_images, dd.kept_new_images])
    replay_y = np.concatenate([dd.replay_labels, dd.kept_new_labels])
    n_unseen = len(dd.unseen_images)
    # The truth of the unseen images is used only by the bound's file, never by a choice.
    un_x, un_true = with_replay(dd.unseen_images, dd.unseen_labels, replay_x, replay_y, config.replay_ratio)
    unseen_probs = cloud_probs(dd.unseen_images)
    un_argmax = un_true.copy()
    un_argmax[:n_unseen] = unseen_probs.argmax(axis=1)
    un_soft = np.concatenate([unseen_probs, mixed(un_x[n_unseen:], un_true[n_unseen:], list(range(k)))])
    held_out_argmax = cloud_probs(dd.unseen_val_images).argmax(axis=1)
    return DeviceFiles(
        val=labelled("val.npz", dd.val_images, dd.val_labels),
        # One validation set for the unseen update, the same for every method: labelled old
        # and new images, and held-out unseen images scored by agreement with the cloud.
        unseen_val=labelled("unseen_val.npz", np.concatenate([dd.val_images, dd.unseen_val_images]),
                            np.concatenate([dd.val_labels, held_out_argmax])),
        incremental_labels=labelled("incremental_labels.npz", inc_x, inc_y),
        incremental_soft=soft("incremental_soft.npz", inc_x, mixed(inc_x, inc_y, known)),
        unseen_soft=soft("unseen_soft.npz", un_x, un_soft),
        unseen_argmax=labelled("unseen_argmax.npz", un_x, un_argmax),
        unseen_true=labelled("unseen_true.npz", un_x, un_true),
    )


def setting_tag(trainable: str, lr: float) -> str:
    return f"{trainable.replace(':', '_')}_lr{lr:g}"


def run_seed(model_paths: dict[str, str], test_path: str, files: DeviceFiles, split: ClassSplit,
             config: DeviceLearningConfig, seed: int, folder: str, app: DeviceApp, settings_key: str) -> dict:
    """Runs every method for one split and seed; returns {method: record}.

    Each method runs every (trainable, learning rate) of the config's grid and keeps the one
    with the best device-validation score after its last update. A record holds the test
    metrics before and after each update (`updates`), the final ones, and the on-device
    seconds of each stage. Stages shared by methods (ours' incremental update, from which
    pseudo-labels and the bound start their unseen update at the same setting) run once per
    setting, and each method is charged their time. Since each method picks its own setting,
    `at_ours_setting` also gives every method's final figures at the setting ours chose: the
    comparison from one starting model.
    """
    test_groups = split.groups_text(("old", "new", "unseen", "seen"))

    def evaluate(model_path: str, checkpoint: str | None) -> dict:
        args = ["evaluate", f"--model={model_path}", f"--data={test_path}", f"--groups={test_groups}"]
        if checkpoint:
            args.append(f"--checkpoint={checkpoint}")
        return app(*args)[0]

    def stage(trainable: str, lr: float, chain: tuple[tuple[str, str, str], ...]) -> dict:
        """One update, `chain` = the (kind, head init, augmentation) of the updates so far (the
        last one is run here)."""
        model_path = model_paths[trainable]
        tag = setting_tag(trainable, lr)
        name = "__".join("-".join(spec) for spec in chain).replace("+", "_")
        os.makedirs(os.path.join(folder, tag), exist_ok=True)
        checkpoint = os.path.join(folder, tag, name + ".npz")
        init = stage(trainable, lr, chain[:-1])["checkpoint"] if len(chain) > 1 else None
        kind, head_init, augment = chain[-1]
        incremental = len(chain) == 1
        val, val_groups = ((files.val, split.groups_text(("old", "new"))) if incremental
                           else (files.unseen_val, split.groups_text(("old", "new", "unseen"))))
        # Replay is inside every training file (same images for every method): no --replay.
        common = [f"--model={model_path}", f"--checkpoint={checkpoint}", "--restart",
                  f"--epochs={config.device_epochs}", f"--lr={lr}", f"--patience={config.patience}",
                  f"--min_delta={config.min_delta}", f"--seed={seed}", f"--val_data={val}",
                  f"--val_groups={val_groups}", f"--head_init={head_init}", f"--augment={augment}"] + (
                      [f"--init={init}"] if init else [])
        if kind in ("labels+cloud", "cloud_soft"):
            args = ["learn-unseen", f"--soft_labels={files.incremental_soft if incremental else files.unseen_soft}"]
        else:
            data = {"labels": files.incremental_labels, "cloud_argmax": files.unseen_argmax,
                    "true_labels": files.unseen_true}[kind]
            args = ["learn", f"--data={data}"]

        def compute():
            result, wall = app(*args, *common)
            return {"app": result, "device_seconds": wall, "checkpoint": checkpoint,
                    "test": evaluate(model_path, checkpoint)}

        return cached(os.path.join(folder, tag, f"stage_{name}.json"), key_of(settings_key, tag, chain, seed), compute)

    first = config.trainable_choices[0]
    base = cached(os.path.join(folder, "stage_base.json"), key_of(settings_key, "base", seed),
                  lambda: {"test": evaluate(model_paths[first], None)})
    grid = [(t, lr) for t in config.trainable_choices for lr in config.lr_choices]
    out, ours_tag = {}, None
    methods = list(METHODS.values()) + (list(ABLATIONS.values()) if seed in config.ablation_seeds else [])
    for method in methods:  # ours first: its setting is the matched one
        if not method.stages:
            out[method.name] = {**method_record(method, base, []), "setting": None, "selection_val": {},
                                "selection_device_seconds": 0.0}
            continue
        specs = method.stage_specs(config.augment)
        tried = {setting_tag(t, lr): [stage(t, lr, specs[:i + 1]) for i in range(len(specs))] for t, lr in grid}
        # The device's own validation score after the method's last update (ties: grid order).
        scores = {tag: runs[-1]["app"]["best_val"] for tag, runs in tried.items()}
        chosen = max(scores, key=lambda tag: scores[tag])
        ours_tag = ours_tag or chosen
        matched = tried[ours_tag][-1]["test"]
        out[method.name] = {**method_record(method, base, tried[chosen]), "setting": chosen, "selection_val": scores,
                            "selection_device_seconds": float(sum(s["device_seconds"] for runs in tried.values()
                                                                  for s in runs)),
                            "at_ours_setting": {"setting": ours_tag, **{k: matched[f"{k}_recall"] for k in
                                                                        ("old", "new", "unseen")},
                                                "unseen_precision": matched["unseen_precision"],
                                                # 10-way accuracy counts unseen images a method never
                                                # learns as errors: not a result without that update.
                                                "accuracy": matched["accuracy"] if method.unseen else None}}
    return out


def method_record(method: Method, base: dict, stages: list[dict]) -> dict:
    """Final test metrics, metrics per update and on-device time of one method."""
    names = ["before"] + [s for s, _ in method.stages]
    tests = [base["test"]] + [s["test"] for s in stages]
    final = tests[-1]
    ran_unseen = method.unseen is not None
    return {
        "old_recall": final["old_recall"],
        # A method that never runs an update has no result for the classes it would learn.
        "new_recall": final["new_recall"] if method.incremental else None,
        # A method that never runs the unseen update has no unseen-class result: not a zero.
        "unseen_recall": final["unseen_recall"] if ran_unseen else None,
        "unseen_precision": final["unseen_precision"] if ran_unseen else None,
        # 10-way accuracy counts the images of classes a method never learns as errors, and
        # old+new accuracy the new-class images of a method without updates: not results.
        "accuracy": final["accuracy"] if ran_unseen else None,
        "seen_accuracy": final["seen_recall"] if method.incremental else None,
        "total_device_seconds": float(sum(s["device_seconds"] for s in stages)) if stages else None,
        "stage_seconds": {n: s["device_seconds"] for n, s in zip(names[1:], stages)},
        "time_to_best_seconds": {n: s["app"]["time_to_converge_seconds"] for n, s in zip(names[1:], stages)},
        # Earlier updates in full, then the last one up to its best validation epoch.
        "device_seconds_to_best": (float(sum(s["device_seconds"] for s in stages[:-1])
                                         + stages[-1]["app"]["time_to_converge_seconds"]) if stages else None),
        "epochs": {n: s["app"]["epochs"] for n, s in zip(names[1:], stages)},
        # The classes whose classifier rows each update imprinted before training.
        "imprinted": {n: (s["app"].get("prepared") or {}).get("imprinted", []) for n, s in zip(names[1:], stages)},
        # Before the update that adds a group, its recall is 0 by construction: null, not a result.
        "updates": [{"after": n, "old": t["old_recall"],
                     "new": t["new_recall"] if i >= 1 else None,
                     "unseen": t["unseen_recall"] if i >= 2 else None,
                     "unseen_precision": t["unseen_precision"] if i >= 2 else None,
                     "seen": t["seen_recall"] if i >= 1 else None,
                     "accuracy": t["accuracy"] if i >= 2 else None}
                    for i, (n, t) in enumerate(zip(names, tests))],
        "history": {n: s["app"]["history"] for n, s in zip(names[1:], stages)},
        "confusion": final["confusion"],
        "ran_unseen_stage": ran_unseen,
        # Updates whose best validation score was the starting model's: they changed nothing.
        "returned_start": sum(int(s["app"]["best_epoch"] == 0) for s in stages),
        "device_cpu_seconds": (float(sum(s["app"].get("process_cpu_seconds", 0.0) for s in stages))
                               if stages else None),
    }
