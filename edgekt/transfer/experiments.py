"""The knowledge-transfer experiments: incremental learning of new classes and learning of unseen
classes from cloud soft labels, on the device (through the device app), against baselines.

Protocol (all class sets and samples seeded):
1. Base device model: the pruned model's classifier cut to the *old* classes, fine-tuned on
   old-class images only (KD from the cloud model's old-class logits). It is exported with a
   classifier grown to old + new + unseen classes; the new rows start near zero.
2. Incremental update: the device receives labelled images of the *new* classes.
   - transfer (ours): targets mix the labels with the cloud's soft labels, the replay
     buffer of old-class images carries the cloud's soft labels too (`learn-unseen` with
     those targets, plus labelled replay steps);
   - finetune (baseline): the same images and replay, labels only (`learn`);
   - scratch (baseline): the same architecture from random weights, the same images and
     replay, labels only (`learn`).
   Every method replays the same buffer, so the difference of ours is the cloud's knowledge.
3. Unseen classes: the device gets unlabelled images of the *unseen* classes and the cloud's
   soft labels for them (`learn-unseen`), replaying labelled images of old and new classes.
Accuracy on old / new / unseen classes of the test split is measured by the app after each
update; times are the app's wall times on this machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Sequence

import keras
import numpy as np
from absl import logging

from edgekt import atomic, data
from edgekt.export import TrainerOptions, export
from edgekt.models import heads, saving
from edgekt.transfer.distiller import TransferConfig
from edgekt.transfer.soft_labels import soft_labels
from edgekt.transfer.training import FinetuneConfig, fit_student


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The protocol's sizes and settings.

    Attributes:
      old_classes, new_classes, unseen_classes: the class split (names).
      base_epochs, base_train_size: fine-tuning of the base device model on old classes.
      new_per_class: labelled images per new class sent to the device.
      unseen_per_class: unlabelled images per unseen class sent to the device.
      replay_per_class: old-class images kept on the device (every method replays them).
      replay_ratio: the app's replay share (half of each batch, or one replay step per step).
      label_mix: weight of the cloud's soft labels in the transfer targets of new images.
      temperature: softmax temperature of the cloud's soft labels.
      device_epochs, device_patience, device_batch_size: the app's training.
      trainable_choices, lr_choices: device settings tried per method (which weights train
        on the device, learning rate); each method keeps the one with the best validation
        accuracy over all classes, so no choice looks at the test split.
      threads: interpreter threads.
      precision: Keras dtype policy for the cloud-side fine-tuning.
      seed: samples and splits.
    """

    old_classes: tuple[str, ...] = ("airplane", "automobile", "bird", "cat", "deer")
    new_classes: tuple[str, ...] = ("dog", "frog", "horse")
    unseen_classes: tuple[str, ...] = ("ship", "truck")
    base_epochs: int = 4
    base_train_size: int | None = None
    new_per_class: int = 300
    unseen_per_class: int = 500
    replay_per_class: int = 20
    replay_ratio: float = 0.5
    label_mix: float = 0.5
    temperature: float = 1.0
    device_epochs: int = 15
    trainable_choices: tuple[str, ...] = ("all", "bn_classifier")
    lr_choices: tuple[float, ...] = (0.01, 0.003)
    device_patience: int = 3
    device_batch_size: int = 32
    threads: int = 1
    precision: str = "float32"
    seed: int = 0

    def __post_init__(self):
        sets = [set(self.old_classes), set(self.new_classes), set(self.unseen_classes)]
        if any(not s for s in sets[:2]) or sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
            raise ValueError("old, new and unseen classes must be non-empty (unseen may be empty) and disjoint. "
                             f"Received: {self.old_classes}, {self.new_classes}, {self.unseen_classes}")
        if not 0 <= self.label_mix <= 1:
            raise ValueError(f"label_mix must be in [0, 1]. Received: {self.label_mix}")
        for field in ("base_epochs", "new_per_class", "replay_per_class", "device_epochs", "device_batch_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"ExperimentConfig.{field} must be >= 1. Received: {getattr(self, field)}")

    @property
    def device_classes(self) -> tuple[str, ...]:
        return tuple(self.old_classes) + tuple(self.new_classes) + tuple(self.unseen_classes)


PRESETS = {
    "smoke": ExperimentConfig(base_epochs=1, base_train_size=2000, new_per_class=40, unseen_per_class=40,
                              replay_per_class=8, device_epochs=2, device_patience=2, device_batch_size=16,
                              trainable_choices=("all",), lr_choices=(0.01,)),
    "cpu": ExperimentConfig(base_epochs=4, new_per_class=300, unseen_per_class=500, replay_per_class=20,
                            device_epochs=15, precision="mixed_bfloat16"),
    "paper": ExperimentConfig(base_epochs=30, new_per_class=1000, unseen_per_class=2000, replay_per_class=50,
                              device_epochs=30, device_patience=5, precision="mixed_bfloat16"),
}


class DeviceApp:
    """Runs `python -m tflite_runtime_app` commands in a separate process (no TensorFlow)."""

    def __init__(self, python: str = sys.executable, threads: int = 1):
        self.python, self.threads = python, threads

    def __call__(self, *args: str) -> dict:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run([self.python, "-m", "tflite_runtime_app", *args, f"--threads={self.threads}", "--quiet"],
                              capture_output=True, text=True, env=env, cwd=root)
        if proc.returncode != 0:
            raise RuntimeError(f"device app {args[0]} failed:\n{proc.stderr[-4000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])


def _group_accuracy(result: dict, classes: Sequence[str]) -> float | None:
    values = [result["per_class"][c] for c in classes if c in result["per_class"]]
    return float(np.mean(values)) if values else None


def _accuracies(result: dict, cfg: ExperimentConfig) -> dict:
    return {"old": _group_accuracy(result, cfg.old_classes), "new": _group_accuracy(result, cfg.new_classes),
            "unseen": _group_accuracy(result, cfg.unseen_classes), "all": result["accuracy"]}


def _save_npz(path: str, **arrays) -> str:
    atomic.write_with(path, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")
    return path


def run_protocol(teacher: keras.Model, pruned: keras.Model, splits: data.DataSplits, out_dir: str,
                 config: ExperimentConfig, *, val_size: int = 5000, split_seed: int = 0,
                 device_python: str = sys.executable) -> dict:
    """Runs the protocol and writes results.json, results.md and the plots to `out_dir`.

    Returns:
      The results (see the module docstring).
    """
    os.makedirs(out_dir, exist_ok=True)
    cfg = config
    names = list(splits.class_names)
    missing = sorted(set(cfg.device_classes) - set(names))
    if missing:
        raise ValueError(f"classes {missing} are not in the data's classes {names}")
    prepared = data.prepare_splits(splits, val_size=val_size, seed=split_seed)
    old_idx = data.class_indices(splits, cfg.old_classes)
    device_names = list(cfg.device_classes)

    def to_device(split: data.Split) -> data.Split:
        """Relabels a split to the device's class order (old, new, unseen)."""
        return data.select_classes(split, device_names, relabel=True)

    train, test = to_device(prepared.train), to_device(prepared.test)
    old_d = data.class_indices(train, cfg.old_classes)
    new_d = data.class_indices(train, cfg.new_classes)
    unseen_d = data.class_indices(train, cfg.unseen_classes) if cfg.unseen_classes else []
    rng_seed = cfg.seed

    # 1. Base device model: old classes only.
    base_dir = os.path.join(out_dir, "base")
    base_path = os.path.join(base_dir, "base.keras")
    if os.path.exists(base_path):
        base = saving.load_model(base_path)
    else:
        base = heads.select_outputs(pruned, old_idx)
        old_train = data.select_classes(train, cfg.old_classes, relabel=True)
        if cfg.base_train_size:
            old_train = data.stratified_subset(old_train, cfg.base_train_size, seed=rng_seed)
        ft = FinetuneConfig(epochs=cfg.base_epochs, batch_size=128 if len(old_train.labels) >= 1280 else 32,
                            learning_rate=0.02, precision=cfg.precision, seed=rng_seed)
        base, _ = fit_student(base, old_train, teacher=heads.select_outputs(teacher, old_idx),
                              transfer=TransferConfig(ce_weight=0.1, kd_weight=0.9, temperature=4.0, at_weight=500.0),
                              config=ft)
        saving.save_model(base, base_path)
    classes_new = list(cfg.new_classes) + list(cfg.unseen_classes)
    model_paths = {}
    for trainable in dict.fromkeys(list(cfg.trainable_choices) + ["all"]):
        device_dir = os.path.join(out_dir, f"device_{trainable.replace(':', '_')}")
        if not os.path.exists(os.path.join(device_dir, "model_meta.json")):
            export(base, device_dir, class_names=list(cfg.old_classes), new_class_names=classes_new,
                   options=TrainerOptions(batch_size=cfg.device_batch_size, trainable=trainable),
                   quantization="float16")
        model_paths[trainable] = os.path.join(device_dir, "model_trainable.tflite")
    scratch_dir = os.path.join(out_dir, "device_scratch")
    if not os.path.exists(os.path.join(scratch_dir, "model_meta.json")):
        export(heads.reinitialized(base, seed=rng_seed), scratch_dir, class_names=list(cfg.old_classes),
               new_class_names=classes_new, options=TrainerOptions(batch_size=cfg.device_batch_size),
               quantization="float16")
    scratch_path = os.path.join(scratch_dir, "model_trainable.tflite")

    # The device's data (cloud-side soft labels are computed here, as the cloud would).
    files = os.path.join(out_dir, "data")
    os.makedirs(files, exist_ok=True)
    new_lab, _ = data.labelled_unlabelled(train, cfg.new_per_class, seed=rng_seed + 1, classes=new_d)
    replay, _ = data.labelled_unlabelled(train, cfg.replay_per_class, seed=rng_seed + 2, classes=old_d)
    val = to_device(prepared.val)
    test_path = _save_npz(os.path.join(files, "test.npz"), images=test.images, labels=test.labels)
    val_path = _save_npz(os.path.join(files, "val.npz"), images=val.images, labels=val.labels)
    new_path = _save_npz(os.path.join(files, "new.npz"), images=new_lab.images, labels=new_lab.labels)
    replay_path = _save_npz(os.path.join(files, "replay.npz"), images=replay.images, labels=replay.labels)
    new_and_replay = data.concat(new_lab, replay)
    # After the incremental update the device keeps a few images of every class it learned.
    kept_new, _ = data.labelled_unlabelled(new_lab, cfg.replay_per_class, seed=rng_seed + 4, classes=new_d)
    replay_all = data.concat(replay, kept_new)
    replay_all_path = _save_npz(os.path.join(files, "replay_old_and_new.npz"), images=replay_all.images,
                                labels=replay_all.labels)
    teacher_cols = [names.index(c) for c in device_names]

    def cloud_soft(images):
        p = soft_labels(teacher, images, cfg.temperature)[:, teacher_cols]
        return p / p.sum(axis=1, keepdims=True)

    def soft_npz(name, images, targets):
        return _save_npz(os.path.join(files, name), images=images, soft_targets=targets.astype(np.float32),
                         temperature=np.float32(cfg.temperature), class_names=np.asarray(device_names))

    # New images: labels mixed with the cloud's soft labels; replayed images: the cloud's view
    # of them (learning without forgetting, with the cloud as the teacher).
    onehot = np.eye(len(device_names), dtype=np.float32)[new_and_replay.labels]
    mixed = (1 - cfg.label_mix) * onehot + cfg.label_mix * cloud_soft(new_and_replay.images)
    is_replay = np.arange(len(new_and_replay.labels)) >= len(new_lab.labels)
    mixed[is_replay] = cloud_soft(new_and_replay.images[is_replay])
    transfer_targets = soft_npz("transfer_targets.npz", new_and_replay.images, mixed)
    unseen_path = None
    if unseen_d:
        unseen_imgs, _ = data.labelled_unlabelled(train, cfg.unseen_per_class, seed=rng_seed + 3, classes=unseen_d)
        # Unlabelled images of the unseen classes, plus the kept images of known classes, all
        # with the cloud's soft labels: the new rows are learned against the old ones.
        images = np.concatenate([unseen_imgs.images, replay_all.images])
        unseen_path = soft_npz("unseen_soft.npz", images, cloud_soft(images))

    app = DeviceApp(device_python, cfg.threads)
    ck = os.path.join(out_dir, "checkpoints")

    def learning(lr):
        return [f"--epochs={cfg.device_epochs}", f"--lr={lr}", f"--patience={cfg.device_patience}",
                f"--seed={cfg.seed}", f"--replay={replay_path}", f"--replay_ratio={cfg.replay_ratio}"]

    def evaluate(path, checkpoint=None, on=test_path):
        args = ["evaluate", f"--model={path}", f"--data={on}"]
        if checkpoint:
            args.append(f"--checkpoint={checkpoint}")
        return _accuracies(app(*args), cfg)

    def run_ours(trainable, lr):
        tag = f"ours_{trainable.replace(':', '_')}_{lr}"
        path = model_paths[trainable]
        inc = app("learn-unseen", f"--model={path}", f"--soft_labels={transfer_targets}",
                  f"--checkpoint={os.path.join(ck, tag + '_incremental.npz')}", *learning(lr))
        unseen = None
        final_ck = os.path.join(ck, tag + "_incremental.npz")
        if unseen_path:
            unseen = app("learn-unseen", f"--model={path}", f"--soft_labels={unseen_path}", f"--init={final_ck}",
                         f"--checkpoint={os.path.join(ck, tag + '_unseen.npz')}", *learning(lr),
                         f"--replay={replay_all_path}")
            final_ck = os.path.join(ck, tag + "_unseen.npz")
        return {"path": path, "inc": inc, "unseen": unseen, "inc_ck": os.path.join(ck, tag + "_incremental.npz"),
                "final_ck": final_ck, "val": evaluate(path, final_ck, val_path)}

    def run_finetune(trainable, lr, path=None):
        tag = f"finetune_{trainable.replace(':', '_')}_{lr}" if path is None else f"scratch_{lr}"
        path = path or model_paths[trainable]
        inc = app("learn", f"--model={path}", f"--data={new_path}",
                  f"--checkpoint={os.path.join(ck, tag + '_incremental.npz')}", *learning(lr))
        return {"path": path, "inc": inc, "unseen": None, "inc_ck": os.path.join(ck, tag + "_incremental.npz"),
                "final_ck": os.path.join(ck, tag + "_incremental.npz"),
                "val": evaluate(path, os.path.join(ck, tag + "_incremental.npz"), val_path)}

    # Settings (which weights train on the device, learning rate) are chosen per method on the
    # validation split (accuracy over all classes after the method's last update), never on test.
    candidates = [(t, lr) for t in cfg.trainable_choices for lr in cfg.lr_choices]
    logging.info("experiments: %d device settings per method, chosen on validation", len(candidates))
    ours_runs = {c: run_ours(*c) for c in candidates}
    ft_runs = {c: run_finetune(*c) for c in candidates}
    sc_runs = {("all", lr): run_finetune("all", lr, scratch_path) for lr in cfg.lr_choices}

    def best(runs):
        key = max(runs, key=lambda c: runs[c]["val"]["all"])
        return key, runs[key]

    ours_key, ours = best(ours_runs)
    ft_key, ft = best(ft_runs)
    sc_key, sc = best(sc_runs)
    before = evaluate(model_paths["all"])
    scratch_before = evaluate(scratch_path)
    ours_inc, ours_unseen = ours["inc"], ours["unseen"]
    ours_after_inc = evaluate(ours["path"], ours["inc_ck"])
    ours_after_unseen = evaluate(ours["path"], ours["final_ck"]) if ours_unseen else None
    ft_inc, ft_after_inc = ft["inc"], evaluate(ft["path"], ft["inc_ck"])
    sc_inc, sc_after_inc = sc["inc"], evaluate(sc["path"], sc["inc_ck"])
    selection = {name: {f"{t} lr={lr}": r["val"]["all"] for (t, lr), r in runs.items()} | {"chosen": f"{k[0]} lr={k[1]}"}
                 for name, runs, k in (("ours", ours_runs, ours_key), ("finetune", ft_runs, ft_key),
                                       ("scratch", sc_runs, sc_key))}

    def method(before_acc, after_inc, inc_run, after_unseen=None, unseen_run=None):
        final = after_unseen or after_inc
        return {
            "old_accuracy_before": before_acc["old"],
            "old_accuracy_after": final["old"],
            "new_accuracy_after": final["new"],
            "unseen_accuracy": final["unseen"] if unseen_run is not None else after_inc["unseen"],
            "all_accuracy_after": final["all"],
            "old_accuracy_after_incremental": after_inc["old"],
            "new_accuracy_after_incremental": after_inc["new"],
            "time_to_converge_seconds": inc_run["time_to_converge_seconds"],
            "incremental_total_seconds": inc_run["total_seconds"],
            "incremental_epochs": inc_run["epochs"],
            "unseen_time_to_converge_seconds": unseen_run["time_to_converge_seconds"] if unseen_run else None,
            "unseen_total_seconds": unseen_run["total_seconds"] if unseen_run else None,
            "updates": [{"update": "base", **before_acc}, {"update": "incremental", **after_inc}]
                       + ([{"update": "unseen", **after_unseen}] if after_unseen else []),
            "history": {"incremental": inc_run["history"], "unseen": unseen_run["history"] if unseen_run else []},
        }

    results = {
        **method(before, ours_after_inc, ours_inc, ours_after_unseen, ours_unseen),
        "device_setting": selection["ours"]["chosen"],
        "baseline_finetune": {**method(before, ft_after_inc, ft_inc), "device_setting": selection["finetune"]["chosen"]},
        "baseline_scratch": {**method(scratch_before, sc_after_inc, sc_inc),
                             "device_setting": selection["scratch"]["chosen"]},
        "config": dataclasses.asdict(cfg),
        "selection_val_all_accuracy": selection,
        "device_classes": device_names,
        "device_batch_size": cfg.device_batch_size,
        "threads": cfg.threads,
        "data_sizes": {"new_labelled": int(len(new_lab.labels)), "replay": int(len(replay.labels)),
                       "unseen_unlabelled": int(cfg.unseen_per_class * len(unseen_d)),
                       "test": int(len(test.labels))},
    }
    atomic.write_json(os.path.join(out_dir, "results.json"), results)
    from edgekt.transfer.experiment_report import write_report

    write_report(out_dir, results)
    return results
