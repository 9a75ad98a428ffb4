"""The benchmark end to end: cloud model (device pool held out) -> per class split, the device
model built from old-class images -> per seed, every method on the device app -> the
never-seen transfer -> results.json, results.md and plots."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys

import numpy as np
from absl import logging

from edgekt import atomic, data
from edgekt.errors import UserError
from edgekt.device_learning import never_seen, report
from edgekt.device_learning.config import ClassSplit, DeviceLearningConfig
from edgekt.device_learning.device_model import build_device_model
from edgekt.device_learning.device_runs import DeviceApp, cached, key_of, run_seed, write_device_files
from edgekt.device_learning.methods import ABLATIONS, METHODS
from edgekt.device_learning.pools import Pools, draw_device_data

RESULTS = "results.json"
# What a never-seen student's training depends on beside its run (and the teacher, its transfer
# set and the device budget); what its result depends on besides (export and evaluation).
NEVER_SEEN_TRAIN_FIELDS = ("never_seen_batch_size", "never_seen_lr", "never_seen_temperature", "precision")
NEVER_SEEN_EVAL_FIELDS = ("never_seen_curve_every", "device_batch_size", "threads")
METRIC_KEYS = ("old_recall", "new_recall", "unseen_recall", "unseen_precision", "accuracy", "seen_accuracy",
               "total_device_seconds", "device_seconds_to_best", "device_cpu_seconds")


def cloud_model(config: DeviceLearningConfig, splits: data.DataSplits, out_dir: str,
                preset_name: str | None = None) -> str:
    """Trains (or resumes) the cloud model with the device pool held out; returns its path."""
    from edgekt import train

    overrides = {"device_pool_size": config.device_pool_size}
    if config.cloud_epochs is not None:
        overrides["epochs"] = config.cloud_epochs
    cfg = train.preset(config.cloud_preset, **overrides)
    train.train_and_evaluate(cfg, splits, out_dir, preset_name=preset_name or config.cloud_preset, verbose=2)
    return os.path.join(out_dir, "model.keras")


def load_pools(splits: data.DataSplits, teacher_metrics: dict) -> Pools:
    """The pools of the cloud run described by `teacher_metrics` (its metrics.json).

    Raises:
      data.DataError: the cloud model was not trained with a device pool, or the pool drawn
        now holds other images than the one it was trained without.
    """
    cfg = teacher_metrics.get("config", {})
    record = teacher_metrics.get("device_pool") or {}
    if not record.get("size"):
        raise data.DataError("the cloud model: trained without a device pool (metrics.json has no device_pool); "
                             "train it with device_pool_size > 0 so that the device's images are not its training "
                             "images")
    prepared = data.prepare_splits(splits, val_size=cfg["val_size"], seed=cfg["seed"],
                                   device_pool_size=record["size"])
    if data.images_sha256(prepared.device_pool.images) != record["sha256"]:
        raise data.DataError("device pool: the one drawn from this data differs from the one the cloud model was "
                             "trained without (other data or another version of it); pass the data the cloud model "
                             "was trained on")
    return Pools.from_prepared(prepared)


def _cloud_metrics(teacher_path: str) -> dict:
    from edgekt.models import saving

    return saving.read_sidecar(teacher_path, required=True)


def _write_test(path: str, split: data.Split) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic.write_with(path, lambda t: np.savez(t, images=split.images, labels=split.labels), suffix=".npz")
    return path


def prepare_split(teacher, teacher_path: str, pools: Pools, split: ClassSplit, config: DeviceLearningConfig,
                  folder: str, settings_key: str, teacher_sha: str) -> tuple[dict, dict[str, str], str]:
    """The device model of one class split (built from old classes only), its TFLite export
    with a classifier grown to the new and unseen classes, and the split's test file.

    Returns:
      (build metrics with lineage, {trainable choice: trainable .tflite path}, test .npz path).
    """
    from edgekt.export import TrainerOptions, export
    from edgekt.models import saving
    from edgekt.prune import config as prune_config

    pcfg = prune_config.preset(config.prune_preset, **dict(config.prune_overrides))
    pools.reset_reads()
    built = build_device_model(teacher, pools, split, pcfg, os.path.join(folder, "device_model"),
                               preset_name=config.prune_preset, teacher_path=teacher_path, teacher_sha256=teacher_sha)
    model_paths = {}
    for trainable in config.trainable_choices:
        export_dir = os.path.join(folder, "export" if trainable == "all" else f"export_{trainable.replace(':', '_')}")
        cached(os.path.join(export_dir, "export.json"), key_of(settings_key, split.name, built["params"], trainable),
               lambda: export(saving.load_model(built["model_path"]), export_dir, class_names=list(split.old),
                              new_class_names=list(split.new + split.unseen),
                              options=TrainerOptions(batch_size=config.device_batch_size, trainable=trainable,
                                                     bn_mode=config.bn_mode),
                              quantization="float16"))
        model_paths[trainable] = os.path.join(export_dir, "model_trainable.tflite")
    test_path = _write_test(os.path.join(folder, "test.npz"), pools.test.take(split.device_classes))  # to measure
    return built, model_paths, test_path


def run_split_seed(teacher, pools: Pools, split: ClassSplit, seed: int, config: DeviceLearningConfig,
                   model_paths: dict[str, str],
                   test_path: str, folder: str, app: DeviceApp, settings_key: str) -> dict:
    """Draws one seed's device data, writes it with the cloud's labels, runs every method."""
    from edgekt.transfer.soft_labels import soft_labels

    cols = [pools.class_names.index(c) for c in split.device_classes]

    def cloud_probs(images):
        p = soft_labels(teacher, images, config.temperature)[:, cols]
        return p / p.sum(axis=1, keepdims=True)

    dd = draw_device_data(pools.device, split.device_classes, split.old, split.new, split.unseen,
                          new_per_class=config.new_per_class, val_per_class=config.val_per_class,
                          replay_per_class=config.replay_per_class, unseen_per_class=config.unseen_per_class,
                          unseen_val_per_class=config.unseen_val_per_class, seed=seed)
    files = write_device_files(os.path.join(folder, "data"), dd, split, cloud_probs, config)
    logging.info("device learning: split %s, seed %d", split.name, seed)
    return run_seed(model_paths, test_path, files, split, config, seed, folder, app, settings_key)


ONLY = ("never_seen",)


def run(config: DeviceLearningConfig, source: str | data.DataSplits, out_dir: str, *, teacher_path: str | None = None,
        device_python: str = sys.executable, preset_name: str | None = None, only: str | None = None,
        shard: tuple[int, int] | None = None) -> dict:
    """Runs the benchmark (or, with `only="never_seen"`, the never-seen stage alone); writes
    `out_dir/results.json`, `results.md` and plots. Every stage resumes from what `out_dir`
    already holds for the same settings. `shard=(k, n)` (never-seen stage alone) trains only the
    runs of index k modulo n; the others are read if finished, else listed as pending."""
    from edgekt.models import saving
    from edgekt.workflow import file_hash

    if only is not None and only not in ONLY:
        raise ValueError(f"only must be None or one of {ONLY}. Received: {only!r}")
    if only is None and config.device_pool_size == 0:
        raise UserError(f"preset {preset_name or ''}: has no device pool (device_pool_size=0), which only the never-seen "
                        "stage can do without; pass --only=never_seen, or a preset with a device pool")
    os.makedirs(out_dir, exist_ok=True)
    splits = source if isinstance(source, data.DataSplits) else data.load(source)
    if teacher_path is None:
        teacher_path = cloud_model(config, splits, os.path.join(out_dir, "cloud"), preset_name)
    teacher_metrics = _cloud_metrics(teacher_path)
    teacher = saving.load_model(teacher_path)
    app = DeviceApp(device_python, config.threads)
    teacher_sha = file_hash(teacher_path)
    lineage = {"cloud": {"images_of": list(splits.class_names), "labels_of": list(splits.class_names),
                         "note": "the cloud model trains on all classes, without the device pool, validation and "
                                 "test images"}}
    if only == "never_seen":
        ns = never_seen_stage(config, splits, teacher, teacher_metrics, teacher_sha, out_dir, app, shard)
        pending = [run.name for run, rec in zip(config.never_seen_runs, ns) if rec is None]
        results = {"preset": preset_name, "only": only,
                   **never_seen_summary([rec for rec in ns if rec is not None], lineage),
                   "never_seen_pending": pending,
                   "cloud": _cloud_record(teacher_metrics), "config": _config_record(config),
                   "device_python": device_python, "rules": NEVER_SEEN_RULES}
        atomic.write_json(os.path.join(out_dir, RESULTS), results)
        report.write(out_dir, results)
        return results

    pools = load_pools(splits, teacher_metrics)
    # What every cached device result depends on; the grid, seeds and splits are in each key itself.
    lists = ("never_seen_runs", "seeds", "splits", "lr_choices", "trainable_choices")
    # The data by content (images and labels of every split): another data set in a used folder
    # is another run, not a cached one.
    data_sha = key_of(sorted((name, data.images_sha256(split.images), data.images_sha256(split.labels),
                              list(splits.class_names)) for name, split in splits.items()))
    settings = key_of({k: v for k, v in dataclasses.asdict(config).items() if k not in lists},
                      teacher_metrics.get("device_pool"), teacher_sha, data_sha)
    per_run, device_models = {}, {}
    for split in config.splits:
        folder = os.path.join(out_dir, "splits", split.name)
        built, model_paths, test_path = prepare_split(teacher, teacher_path, pools, split, config, folder, settings,
                                                      teacher_sha)
        lineage[f"device_model[{split.name}]"] = built["lineage"]
        device_models[split.name] = {k: built[k] for k in ("params", "teacher_params", "flops", "val_accuracy",
                                                             "chosen_step")}
        for seed in config.seeds:
            per_run[(split.name, seed)] = run_split_seed(teacher, pools, split, seed, config, model_paths, test_path,
                                                         os.path.join(folder, f"seed{seed}"), app,
                                                         key_of(settings, built["params"]))
    ns = never_seen_stage(config, splits, teacher, teacher_metrics, teacher_sha, out_dir, app)
    results = summarize(config, per_run, lineage, ns, teacher_metrics, device_models, preset_name, device_python)
    atomic.write_json(os.path.join(out_dir, RESULTS), results)
    report.write(out_dir, results)
    return results


def never_seen_stage(config: DeviceLearningConfig, splits: data.DataSplits, teacher, teacher_metrics: dict,
                     teacher_sha: str, out_dir: str, app: DeviceApp,
                     shard: tuple[int, int] | None = None) -> list[dict | None]:
    """Every never-seen run of `config` (each resumes from its state in out_dir/never_seen); with
    `shard`, see `never_seen.run_all`."""
    from edgekt.prune import config as prune_config

    if not config.never_seen_runs:
        return []
    if "test" not in splits:
        raise data.DataError("the never-seen stage measures on a test split, and the data has none; pass data with a "
                             "test split")
    folder = os.path.join(out_dir, "never_seen")
    test_path = _write_test(os.path.join(folder, "test.npz"), splits["test"])  # to measure, never to choose
    ratio = prune_config.preset(config.prune_preset, **dict(config.prune_overrides)).target_params_ratio or 0.05
    fields = dataclasses.asdict(config)
    train_key = key_of({k: fields[k] for k in NEVER_SEEN_TRAIN_FIELDS}, ratio, teacher_sha)
    test = splits["test"]
    result_key = key_of(train_key, {k: fields[k] for k in NEVER_SEEN_EVAL_FIELDS}, data.images_sha256(test.images),
                        hashlib.sha256(test.labels.astype("int64").tobytes()).hexdigest())
    return never_seen.run_all(teacher, splits, config, ratio, test_path, folder, app, train_key, result_key, shard)


NEVER_SEEN_RULES = {
    "never_seen": "a never-seen student receives training images of its split's classes only and no label at all; "
                  "its teacher is the cloud model (all classes); students that start from the cloud's weights are "
                  "reported apart (their lineage says why)",
    "final_epoch": "the figure reported is the last epoch's of a schedule fixed in the preset, measured by the device "
                   "app on the exported model; the learning curve (every few epochs, Keras) is shown, never used to "
                   "choose",
    "test": "the test images are read only to measure",
}


def never_seen_summary(records: list[dict], lineage: dict) -> dict:
    """results.json's never-seen part: `never_seen` {split: {student: {loss: record}}} of the main
    table, `never_seen_ablation` [record], `cloud_weights_students` [record] (students that start
    from the cloud's weights: not never-seen figures), and each student's lineage in `lineage`."""
    table: dict = {}
    ablation, inherited = [], []
    for rec in records:
        if not rec["lineage"].get("never_seen", False):
            # Students that start from the cloud's weights learned every class through them.
            inherited.append(rec)
            lineage[f"cloud_weights_student[{rec['split']}, {rec['student']}, {rec['loss']}, {rec['variant']}]"] = (
                rec["lineage"])
        elif rec["table"] == "main":
            table.setdefault(rec["split"], {}).setdefault(rec["student"], {})[rec["loss"]] = rec
            lineage[f"never_seen_student[{rec['split']}, {rec['student']}, {rec['loss']}]"] = rec["lineage"]
        else:
            ablation.append(rec)
            lineage[f"never_seen_ablation[{rec['split']}, {rec['student']}, {rec['loss']}, {rec['variant']}]"] = (
                rec["lineage"])
    return {"never_seen": table, "never_seen_ablation": ablation, "cloud_weights_students": inherited,
            "lineage": lineage}


def _cloud_record(teacher_metrics: dict) -> dict:
    return {k: teacher_metrics.get(k) for k in ("architecture", "test_accuracy", "val_accuracy", "train_images",
                                               "device_pool", "params")}


def _config_record(config: DeviceLearningConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _mean_std(values: list) -> dict:
    """Mean and sample standard deviation (ddof=1) of the values that exist."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(present)), "std": float(np.std(present, ddof=1)) if len(present) > 1 else None,
            "n": len(present)}


def ablation_summary(per_run: dict) -> dict:
    """Each ablation's means over the runs where it ran, beside ours and fine-tuning on the
    same runs (a paired comparison)."""
    out = {}
    for name, method in ABLATIONS.items():
        keys = [k for k, r in per_run.items() if name in r]
        if not keys:
            continue
        out[name] = {"label": method.label, "runs": len(keys), "run_keys": [f"{s}/seed{seed}" for s, seed in keys],
                     **_paired_means([per_run[key][name] for key in keys])}
        for ref in ("ours", "finetune"):
            out.setdefault(f"{ref} (same runs)", {"label": METHODS[ref].label, "runs": len(keys),
                                                  **_paired_means([per_run[key][ref] for key in keys])})
    return out


def _paired_means(records: list[dict]) -> dict:
    """Means of the final metrics and of old / new / old+new after the incremental update."""
    out = {k: _mean_std([r[k] for r in records])["mean"] for k in METRIC_KEYS}
    for g in ("old", "new", "seen"):
        out[f"incremental_{g}"] = _mean_std([r["updates"][1][g] if len(r["updates"]) > 1 else None
                                             for r in records])["mean"]
    return out


UPDATE_KEYS = ("old", "new", "unseen", "unseen_precision", "seen", "accuracy")


def update_summary(per_run: dict) -> dict:
    """Per method, per update (before, incremental, unseen): old / new / unseen test recall
    and 10-way accuracy, mean and std over runs."""
    out = {}
    for name in METHODS:
        rows = [r[name]["updates"] for r in per_run.values()]
        if not rows:
            continue
        out[name] = [{"after": rows[0][i]["after"],
                      **{g: _mean_std([row[i].get(g) for row in rows]) for g in UPDATE_KEYS},
                      # Paired changes against the model before this update.
                      "old_change": _mean_std([row[i]["old"] - row[i - 1]["old"] for row in rows]) if i else None,
                      "new_change": _mean_std([row[i]["new"] - row[i - 1]["new"] for row in rows
                                               if row[i]["new"] is not None and row[i - 1]["new"] is not None])
                      if i else None}
                     for i in range(len(rows[0]))]
    return out


def summarize(config: DeviceLearningConfig, per_run: dict, lineage: dict, never_seen_results: list[dict],
              teacher_metrics: dict, device_models: dict, preset_name: str | None, device_python: str) -> dict:
    """The results.json body: means over splits and seeds per method (`methods`), their spread
    (`methods_std`), per-split means, every run, lineage, the never-seen table and the rules."""
    methods, spread, by_split = {}, {}, {}
    for name in METHODS:
        rows = [r[name] for r in per_run.values()]
        stats = {k: _mean_std([row[k] for row in rows]) for k in METRIC_KEYS}
        methods[name] = {k: v["mean"] for k, v in stats.items()}
        methods[name]["label"] = METHODS[name].label
        methods[name]["ran_unseen_stage"] = METHODS[name].unseen is not None
        methods[name]["returned_start"] = sum(row["returned_start"] for row in rows)
        matched = [row["at_ours_setting"] for row in rows if row.get("at_ours_setting")]
        if matched and METHODS[name].stages:
            methods[name]["at_ours_setting"] = {
                k: _mean_std([row[k] for row in matched])["mean"] if name != "finetune" or k not in (
                    "unseen", "unseen_precision", "accuracy") else None
                for k in ("old", "new", "unseen", "unseen_precision", "accuracy")}
        methods[name]["runs"] = len(rows)
        methods[name]["selection_device_seconds"] = _mean_std([row["selection_device_seconds"] for row in rows])["mean"]
        methods[name]["settings_chosen"] = {tag: sum(row["setting"] == tag for row in rows)
                                            for tag in dict.fromkeys(row["setting"] for row in rows)
                                            if tag is not None}
        spread[name] = {k: v["std"] for k, v in stats.items()}
        for split in config.splits:
            split_rows = [r[name] for (s, _), r in per_run.items() if s == split.name]
            by_split.setdefault(split.name, {})[name] = {k: _mean_std([row[k] for row in split_rows])["mean"]
                                                         for k in METRIC_KEYS}
    ablations = ablation_summary(per_run)
    ns = never_seen_summary(never_seen_results, lineage)
    return {
        "preset": preset_name,
        "methods": methods,
        "methods_std": spread,
        "by_split": by_split,
        "ablations": ablations,
        "updates": update_summary(per_run),
        "runs": {f"{s}/seed{seed}": r for (s, seed), r in per_run.items()},
        **ns,
        "device_models": device_models,
        "cloud": _cloud_record(teacher_metrics),
        "splits": [dataclasses.asdict(s) for s in config.splits],
        "seeds": list(config.seeds),
        "config": _config_record(config),
        "device_python": device_python,
        "rules": {
            "choices": "temperature, label mix, replay ratio, augmentation, batch-norm mode, epoch cap and patience "
                       "are fixed in the preset; each "
                       "method runs every (trainable weights, learning rate) of the preset's grid and keeps the one "
                       "with the best device-validation score after its last update (old/new labels, agreement with "
                       "the cloud on held-out unseen images); nothing is chosen on test images or on labels of "
                       "unseen classes",
            "stopping": "every method stops on the same validation set: labelled old- and new-class device images "
                        "(incremental update); the same plus held-out unseen-class device images scored by "
                        "agreement with the cloud's top-1 (unseen update); same patience and epoch cap",
            "time": "total_device_seconds is the wall time of every update's device-app process (start-up, "
                    "loading, first validation, every epoch including plateau epochs, checkpoint writes) for the "
                    "chosen setting; selection_device_seconds adds every setting of the grid (what choosing on the "
                    "device costs); a stage shared by several methods is charged to each",
            "unseen": "unseen_recall and unseen_precision are null for a method that does not run the unseen "
                      "update (it has no labels to learn from), and new_recall for one that runs no update: never a "
                      "zero by construction",
            "precision": "group precision is the mean over the group's classes, a class never predicted counting "
                         "as 0",
            "spread": "std is the sample std over splits x seeds; seeds vary the device's images and data order, "
                      "while the cloud model and each split's device model are shared by the seeds",
            "stopping_score": "validation score = mean over groups (old, new; and unseen, by agreement with the "
                              "cloud, in the unseen update) of the accuracy within the group; the initial model "
                              "counts as a candidate, so an update that does not help returns its start "
                              "(returned_start counts those runs)",
            "test": "the test images are read only to measure, after every choice is made",
            **NEVER_SEEN_RULES,
            "unseen_lineage": "the incremental update's targets hold the cloud's probabilities of the old and new "
                              "classes only (renormalised), so no image, label or probability of an unseen class "
                              "reaches the device before its unseen update; rows are imprinted only for classes "
                              "that are some training image's target in the update that adds them",
        },
    }
