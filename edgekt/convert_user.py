"""Converting a user's Keras model: check it, prune it with knowledge transfer from itself,
and export an on-device-trainable .tflite with app-ready metadata."""

from __future__ import annotations

import dataclasses
import math
import os

from absl import logging

from edgekt import atomic, compatibility, data
from edgekt.errors import UserError
from edgekt.export import pipeline as export_pipeline
from edgekt.models import saving
from edgekt.prune import config as prune_config
from edgekt.prune import pruner


AUTO = "auto"
# A split of these names in the data is the validation set (else --val_size images of train/).
VAL_SPLITS = ("val", "validation")
DEFAULT_FLOOR_POINTS = 1.0
# Fine-tuning rates tried on the unpruned model before pruning (the largest that keeps it is used).
LEARNING_RATE_CHOICES = (0.05, 0.01, 0.002)


def auto_config(train_images: int, budget_minutes: float | None = 30.0, **overrides) -> prune_config.PruneConfig:
    """The default conversion policy: remove as much as the accuracy floor allows (at most
    `DEFAULT_FLOOR_POINTS` below the original model on validation; a step that breaks it is
    discarded and the next one removes half as much), distilling from the original model at the
    largest of `LEARNING_RATE_CHOICES` that does not lower the original's validation accuracy, with
    fine-tuning sized to the data (about 10,000 images per step and 60,000 for the final
    fine-tuning, in whole epochs) and at most `budget_minutes`. `overrides` replace fields
    (a --target_params_ratio or --target_flops_ratio adds a target; the floor stays)."""
    n = max(int(train_images), 1)
    fields = dict(target_params_ratio=None, max_accuracy_drop=DEFAULT_FLOOR_POINTS, step_keep=0.6, min_step=0.05,
                  max_steps=8, step_epochs=min(8, max(1, math.ceil(10_000 / n))),
                  final_epochs=min(40, max(3, math.ceil(60_000 / n))), candidates=("l1/global", "attention/cost:0.5"),
                  probe_images=min(4096, n), calibration_size=min(1024, n), batch_size=64, transfer="kd_at",
                  learning_rate_choices=LEARNING_RATE_CHOICES,
                  budget_seconds=None if budget_minutes is None else 60.0 * budget_minutes)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return prune_config.PruneConfig(**fields)


def convert(model_path: str, source: str | data.DataSplits, out_dir: str, *, preset: str = AUTO,
            val_size: int = 1000, seed: int = 0, batch_size: int = 32, resize: bool = False,
            budget_minutes: float | None = 30.0, **prune_overrides) -> dict:
    """Checks, prunes (teacher = the user's model) and exports a user's model.

    By default (`preset="auto"`) it removes as much as the accuracy floor allows within
    `budget_minutes` (see `auto_config`); a preset ("smoke", "cpu", "paper") prunes to the
    preset's ratio on its schedule instead.

    Validation (where the floor is measured and models are chosen) is the data's val/ (or
    validation/) folder when it has one, else `val_size` images held out of train/.

    The model must take raw pixels (0-255) and output logits (or softmax probabilities from
    its last layer). Writes OUT/prune/pruned.keras and OUT/export/{model_trainable.tflite,
    model_int8.tflite, model_meta.json, metrics.json}, plus OUT/convert.json.

    Images of another size than the model's input are refused, or resized with `resize`.

    Raises:
      UnsupportedUserModelError: lists every unsupported layer or structure, before any work.
    """
    compatibility.check_file(model_path)
    model = saving.load_model(model_path)
    splits = data.load_for(source, model.input_shape[1:], resize=resize)
    if int(model.output_shape[-1]) != len(splits.class_names):
        raise UserError(f"{model_path}: has {model.output_shape[-1]} outputs but the data has "
                        f"{len(splits.class_names)} classes {list(splits.class_names)}; pass data with one class "
                        "folder per model output")
    val_name = next((n for n in VAL_SPLITS if n in splits), None)
    if "train" in splits:
        held = 0 if val_name else min(val_size, len(splits["train"].labels))
        train_images = len(splits["train"].labels) - held
    else:
        train_images = 0  # refused by the pruner with its own message
    if preset == AUTO:
        cfg = auto_config(train_images, budget_minutes, **prune_overrides)
    else:
        cfg = prune_config.preset(preset, **prune_overrides)
    prune_dir = os.path.join(out_dir, "prune")
    if val_name:
        # The data's own validation folder (images the user's model did not train on) sets the floor.
        if len(splits["train"].labels) < cfg.batch_size:
            raise UserError(f"{splits.source}: the train split has {len(splits['train'].labels)} images, fewer than "
                            f"one batch of {cfg.batch_size}; add training images")
        prepared = data.PreparedData(splits["train"], splits[val_name], splits.get("test"), splits.class_names,
                                     splits.source)
        metrics = pruner.prune_prepared(model, prepared, prune_dir, cfg, holdout={"val_split": val_name},
                                        preset_name=preset, teacher_path=model_path, allow_unpruned=preset == AUTO)
        validation = f"the data's {val_name}/ folder ({len(splits[val_name].labels)} images)"
    else:
        metrics = pruner.prune_and_finetune(model, splits, prune_dir, cfg, val_size=val_size, split_seed=seed,
                                            preset_name=preset, teacher_path=model_path, allow_unpruned=preset == AUTO)
        validation = f"{min(val_size, len(splits['train'].labels))} images held out of train/"
    export_dir = os.path.join(out_dir, "export")
    exported = export_pipeline.export_model(os.path.join(prune_dir, "pruned.keras"), export_dir, data_source=splits,
                                            batch_size=batch_size)
    summary = {"model": model_path,
               "prune": {k: metrics.get(k) for k in PRUNE_KEYS},
               "export": {k: exported.get(k) for k in EXPORT_KEYS},
               "preset": preset, "validation": validation, "config": dataclasses.asdict(cfg)}
    summary["summary"] = summary_line(model_path, summary, cfg, preset)
    atomic.write_json(os.path.join(out_dir, "convert.json"), summary)
    atomic.write_json(os.path.join(out_dir, "metrics.json"), summary)
    logging.info("%s", summary["summary"])
    return summary


PRUNE_KEYS = ("params", "teacher_params", "params_removed_fraction", "flops", "teacher_flops", "flops_removed_fraction",
              "val_accuracy", "teacher_val_accuracy", "test_accuracy", "teacher_test_accuracy", "accuracy_floor",
              "file_bytes", "teacher_file_bytes", "latency_ms_batch1", "teacher_latency_ms_batch1", "target_met",
              "stopped", "steps_discarded", "final_finetune_kept", "unpruned", "learning_rate",
              "learning_rate_calibration", "wall_seconds")
EXPORT_KEYS = ("trainable_bytes", "inference_bytes", "trainable_test_accuracy", "inference_test_accuracy",
               "trainable_keras_top1_agreement", "trainable_keras_max_logit_diff")


def _acc(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _size(v) -> str:
    return "n/a" if v is None else (f"{v / 1e6:.2f} MB" if v >= 1e6 else f"{v / 1e3:.1f} KB")


def summary_line(model_path: str, summary: dict, cfg: prune_config.PruneConfig, preset: str) -> str:
    """One line: original vs converted accuracy (validation; test where the data has a test
    split), parameters, FLOPs, file sizes, latency, the floor used, and what the policy was."""
    p, e = summary["prune"], summary["export"]
    floor = (f"floor {_acc(p['accuracy_floor'])} ({cfg.max_accuracy_drop:g} points below the original on validation: "
             f"{summary.get('validation', 'held out of train/')})"
             if p.get("accuracy_floor") is not None else "no accuracy floor")
    policy = ", ".join(x for x in (
        f"keep {cfg.target_params_ratio:g} of the parameters" if cfg.target_params_ratio is not None else "",
        f"keep {cfg.target_flops_ratio:g} of the FLOPs" if cfg.target_flops_ratio is not None else "",
        floor) if x)
    if preset == AUTO:
        rate = p.get("learning_rate")
        policy += (f"; fine-tuning {cfg.step_epochs} epoch(s) per step and {cfg.final_epochs} at the end (sized to "
                   "the data), distilled from the original"
                   + (f" at learning rate {rate:g} (chosen on validation among "
                      f"{', '.join(f'{r:g}' for r in cfg.learning_rate_choices)})"
                      if rate is not None and cfg.learning_rate_choices else "")
                   + (f", within {cfg.budget_seconds / 60:g} min" if cfg.budget_seconds else ""))
        if p.get("stopped"):
            policy += f"; stopped by {p['stopped']}"
        if p.get("unpruned"):
            policy += ("; no pruned model kept the floor, so the device model is the original, unpruned (pass a "
                       "larger --budget_minutes or --max_accuracy_drop to remove filters)")
    demo = (" The smoke preset is a quick demonstration (a fixed ratio on a short schedule), not a setting that keeps "
            "accuracy: pass --max_accuracy_drop=1 (with --preset=cpu for a longer schedule) to keep it."
            if preset == "smoke" and p.get("accuracy_floor") is None else "")
    return (f"converted {model_path}: val top-1 {_acc(p['teacher_val_accuracy'])} -> {_acc(p['val_accuracy'])}, "
            f"test top-1 {_acc(p['teacher_test_accuracy'])} -> {_acc(p['test_accuracy'])} (device model, trainable "
            f".tflite: {_acc(e.get('trainable_test_accuracy'))}), params {p['teacher_params']:,} -> {p['params']:,}, "
            f"FLOPs {p['teacher_flops'] / 1e6:.1f}M -> {p['flops'] / 1e6:.1f}M, .keras {_size(p['teacher_file_bytes'])} "
            f"-> {_size(p['file_bytes'])} (trainable .tflite {_size(e.get('trainable_bytes'))}, int8 .tflite "
            f"{_size(e.get('inference_bytes'))}), latency {p['teacher_latency_ms_batch1']:.2f} -> "
            f"{p['latency_ms_batch1']:.2f} ms (Keras, batch 1); preset {preset}: {policy}.{demo}")


def check(model_path: str) -> list[str]:
    """The problems of a model file (empty if it converts)."""
    return compatibility.file_problems(model_path)
