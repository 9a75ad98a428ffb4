"""The end-to-end workflow: cloud model -> prune -> export -> on-device learning benchmark
(-> baseline -> report), each stage cached in a manifest keyed by a hash of its inputs.

A stage whose inputs (flags, preset, upstream files, data) are unchanged and whose outputs
exist is skipped; the cloud and pruning stages also resume inside themselves, so a run
killed mid-stage continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Callable

from absl import logging

from edgekt import atomic, data
from edgekt.data import cache as data_cache
from edgekt.errors import UserError

MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class WorkflowPreset:
    """The presets of every stage that a workflow preset combines, with field overrides that
    fit the whole chain into the preset's time (e.g. `cpu`: under 90 minutes on 2 cores).

    The tfmot baseline is fine-tuned for as many epochs as the pruning stage fine-tunes
    (steps x step_epochs + final_epochs): the same budget.
    """

    cloud: str
    prune: str
    device_learning: str
    sweep: str = "smoke"
    cloud_overrides: tuple = ()
    prune_overrides: tuple = ()
    export_batch_size: int = 32
    baseline_train_size: int | None = None
    baseline_batch_size: int = 128


PRESETS = {
    "smoke": WorkflowPreset(cloud="smoke", prune="smoke", device_learning="smoke", export_batch_size=16,
                            baseline_train_size=5000, baseline_batch_size=64),
    "cpu": WorkflowPreset(cloud="cpu", prune="cpu", device_learning="cpu", sweep="cpu", cloud_overrides=(("epochs", 15),),
                          prune_overrides=(("step_epochs", 1), ("final_epochs", 6))),
    "paper": WorkflowPreset(cloud="paper", prune="paper", device_learning="paper", sweep="paper"),
}


def file_hash(path: str) -> str:
    """sha256 of a file's bytes (or of a folder's names, sizes and mtimes)."""
    if os.path.isdir(path):
        return hashlib.sha256(json.dumps(data_cache.fingerprint(path)).encode()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_identity(source: str) -> str:
    """What identifies a data source: tfds name, or the fingerprint of the file/folder."""
    if source.startswith("tfds"):
        return source
    return hashlib.sha256(json.dumps(data_cache.fingerprint(source)).encode()).hexdigest()


class Manifest:
    """Per-stage input hashes, outputs and the digests of those outputs, in
    `out_dir/manifest.json` (written atomically). A stage is cached only when its inputs are
    unchanged and every output is there with the bytes it had when the stage wrote it."""

    def __init__(self, out_dir: str):
        self.path = os.path.join(out_dir, MANIFEST)
        self.entries: dict = {}
        if os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    self.entries = json.load(f)
            except (OSError, ValueError) as e:
                raise UserError(f"{self.path}: unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]}); "
                                "remove it (every stage then runs again, resuming from its own checkpoints) or pass "
                                "another --out_dir") from e
            if not isinstance(self.entries, dict) or not all(isinstance(v, dict) for v in self.entries.values()):
                raise UserError(f"{self.path}: not the record run_all writes (a JSON object of stages); remove it "
                                "(every stage then runs again, resuming from its own checkpoints) or pass another "
                                "--out_dir")

    def cached(self, name: str, key: str, outputs: list[str]) -> bool:
        entry = self.entries.get(name)
        if not entry or entry.get("key") != key or not all(os.path.isfile(p) for p in outputs):
            return False
        digests = entry.get("digests")
        return isinstance(digests, dict) and all(digests.get(p) == file_hash(p) for p in outputs)

    def run(self, name: str, inputs: dict, outputs: list[str], fn: Callable[[], dict | None]) -> dict:
        """Runs `fn` unless the stage's inputs are unchanged and its outputs are as it wrote them."""
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        if self.cached(name, key, outputs):
            logging.info("stage %s: cached (inputs unchanged, outputs as written)", name)
            return self.entries[name].get("result") or {}
        logging.info("stage %s: running", name)
        start = time.perf_counter()
        result = fn() or {}
        missing = [p for p in outputs if not os.path.isfile(p)]
        if missing:
            raise RuntimeError(f"stage {name} did not write {missing}")
        self.entries[name] = {"key": key, "inputs": inputs, "outputs": outputs, "result": result,
                              "digests": {p: file_hash(p) for p in outputs},
                              "seconds": time.perf_counter() - start}
        atomic.write_json(self.path, self.entries)
        return result


def _load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def run(preset_name: str, source: str, out_dir: str, *, teacher_path: str | None = None,
        pruned_path: str | None = None, stages: tuple[str, ...] = ("cloud", "prune", "export", "device_learning"),
        device_python: str = sys.executable, threads: int = 1, resize: bool = False) -> dict:
    """Runs the workflow's stages for a preset; returns each stage's result by name.

    Args:
      preset_name: "smoke", "cpu" or "paper".
      source: the data source.
      out_dir: where every stage writes (cloud/, prune/, export/, device_learning/, baseline/,
        sweep/).
      teacher_path: use this cloud model instead of training one.
      pruned_path: use this pruned model instead of pruning.
      stages: which stages to run, in order.
      device_python: the Python that runs the device app (e.g. a tflite-runtime venv).
      threads: interpreter threads on the device.
      resize: resize images of another size to the first image's size instead of refusing them.
    """
    from edgekt import train
    from edgekt.models import saving
    from edgekt.prune import config as prune_config
    from edgekt.prune import pruner
    from edgekt import device_learning

    if preset_name not in PRESETS:
        raise UserError(f"preset {preset_name!r}: unknown preset; choose one of {sorted(PRESETS)}")
    preset = PRESETS[preset_name]
    dl_config = dataclasses.replace(device_learning.PRESETS[preset.device_learning], threads=threads)
    os.makedirs(out_dir, exist_ok=True)
    manifest = Manifest(out_dir)
    data_id = data_identity(source) + (":resized" if resize else "")
    results: dict = {}
    splits_cache: dict = {}

    def splits():
        if "s" not in splits_cache:
            splits_cache["s"] = data.load(source, resize=resize)
        return splits_cache["s"]

    cloud_dir = os.path.join(out_dir, "cloud")
    given_teacher, given_pruned = teacher_path is not None, pruned_path is not None
    teacher_path = teacher_path or os.path.join(cloud_dir, "model.keras")
    if "cloud" in stages and not given_teacher:
        # The cloud never trains on the device pool: the device learning stage draws its images there.
        cfg = train.preset(preset.cloud, **dict(preset.cloud_overrides), device_pool_size=dl_config.device_pool_size)
        results["cloud"] = manifest.run(
            "cloud", {"config": dataclasses.asdict(cfg), "data": data_id},
            [teacher_path, os.path.join(cloud_dir, "metrics.json")],
            lambda: train.train_and_evaluate(cfg, splits(), cloud_dir, preset_name=preset.cloud, verbose=2))
    teacher_info = saving.read_sidecar(teacher_path)
    val_size = teacher_info.get("config", {}).get("val_size", 5000)
    split_seed = teacher_info.get("config", {}).get("seed", 0)
    pool_size = (teacher_info.get("device_pool") or {}).get("size", 0)

    prune_dir = os.path.join(out_dir, "prune")
    pruned_path = pruned_path or os.path.join(prune_dir, "pruned.keras")
    if "prune" in stages and not given_pruned:
        pcfg = prune_config.preset(preset.prune, **dict(preset.prune_overrides))

        def do_prune():
            teacher, _ = pruner.load_teacher(teacher_path)
            return pruner.prune_and_finetune(teacher, splits(), prune_dir, pcfg, val_size=val_size,
                                             split_seed=split_seed, device_pool_size=pool_size,
                                             preset_name=preset.prune,
                                             teacher_path=teacher_path)

        results["prune"] = manifest.run(
            "prune", {"config": dataclasses.asdict(pcfg), "data": data_id, "teacher": file_hash(teacher_path)},
            [pruned_path, os.path.join(prune_dir, "metrics.json")], do_prune)

    export_dir = os.path.join(out_dir, "export")
    if "export" in stages:
        from edgekt.export import pipeline as export_pipeline

        results["export"] = manifest.run(
            "export", {"model": file_hash(pruned_path), "data": data_id, "batch": preset.export_batch_size},
            [os.path.join(export_dir, name) for name in ("model_trainable.tflite", "model_meta.json", "model_int8.tflite",
                                                         "replay.npz", "metrics.json")],
            lambda: export_pipeline.export_model(pruned_path, export_dir, data_source=splits(),
                                                 batch_size=preset.export_batch_size))

    device_dir = os.path.join(out_dir, "device_learning")
    if "device_learning" in stages:
        results["device_learning"] = manifest.run(
            "device_learning", {"config": dataclasses.asdict(dl_config), "data": data_id,
                                "teacher": file_hash(teacher_path), "device_python": device_python},
            [os.path.join(device_dir, "results.json")],
            lambda: device_learning.run(dl_config, splits(), device_dir, teacher_path=teacher_path,
                                        device_python=device_python, preset_name=preset.device_learning))
    baseline_dir = os.path.join(out_dir, "baseline")
    if "baseline" in stages:
        from edgekt.baselines import tfmot_magnitude
        from edgekt.export import measure
        from edgekt.flops import count_params

        pcfg = prune_config.preset(preset.prune, **dict(preset.prune_overrides))
        bcfg = tfmot_magnitude.MagnitudeConfig(epochs=pcfg.steps * pcfg.step_epochs + pcfg.final_epochs,
                                               batch_size=preset.baseline_batch_size,
                                               train_size=preset.baseline_train_size,
                                               learning_rate=pcfg.final_learning_rate,
                                               weight_decay=pcfg.weight_decay, precision=pcfg.precision)

        def do_baseline():
            pruned = saving.load_model(pruned_path)
            figures = measure.file_figures(measure.inference_file(pruned, "float32"))
            ours = {"tflite_bytes": figures["bytes"], "tflite_gzip_bytes": figures["gzip_bytes"],
                    "tflite_latency_ms": figures["latency_ms"]}
            atomic.write_json(os.path.join(baseline_dir, "ours.json"), ours)
            return tfmot_magnitude.run(saving.load_model(teacher_path), count_params(pruned), splits(), baseline_dir,
                                       bcfg, val_size=val_size, split_seed=split_seed, device_pool_size=pool_size)

        os.makedirs(baseline_dir, exist_ok=True)
        results["baseline"] = manifest.run(
            "baseline", {"config": dataclasses.asdict(bcfg), "data": data_id, "teacher": file_hash(teacher_path),
                         "pruned": file_hash(pruned_path)},
            [os.path.join(baseline_dir, "metrics.json"), os.path.join(baseline_dir, "ours.json")], do_baseline)
    if "sweep" in stages:
        from edgekt import sweep

        scfg = sweep.preset(preset.sweep)
        sweep_dir = os.path.join(out_dir, "sweep")

        def do_sweep():
            summary = sweep.run(saving.load_model(teacher_path), splits(), sweep_dir, scfg, val_size=val_size,
                                split_seed=split_seed, device_pool_size=pool_size, teacher_path=teacher_path)
            return {"models": len(summary["rows"]), "table": os.path.join(sweep_dir, sweep.TABLE_FILE)}

        results["sweep"] = manifest.run(
            "sweep", {"config": dataclasses.asdict(scfg), "data": data_id, "teacher": file_hash(teacher_path)},
            [os.path.join(sweep_dir, sweep.SWEEP_FILE)], do_sweep)
    if "report" in stages:
        from edgekt import report

        results["report"] = report.write(out_dir, preset_name)
    results["paths"] = {"teacher": teacher_path, "pruned": pruned_path, "export": export_dir,
                        "device_learning": device_dir, "out_dir": out_dir}
    return results
