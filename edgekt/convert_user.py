"""Converting a user's Keras model: check it, prune it with knowledge transfer from itself,
and export an on-device-trainable .tflite with app-ready metadata."""

from __future__ import annotations

import dataclasses
import os

import keras
from absl import logging

from edgekt import atomic, compatibility, data
from edgekt.errors import UserError
from edgekt.export import pipeline as export_pipeline
from edgekt.models import saving
from edgekt.prune import config as prune_config
from edgekt.prune import pruner


class UnsupportedUserModelError(UserError):
    """The model cannot be converted; `problems` lists every reason."""

    def __init__(self, path: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{path} cannot be converted:\n" + "\n".join(f"  - {p}" for p in problems))


def convert(model_path: str, source: str | data.DataSplits, out_dir: str, *, preset: str = "smoke",
            val_size: int = 1000, seed: int = 0, batch_size: int = 32, **prune_overrides) -> dict:
    """Checks, prunes (teacher = the user's model) and exports a user's model.

    The model must take raw pixels (0-255) and output logits (or softmax probabilities from
    its last layer). Writes OUT/prune/pruned.keras and OUT/export/{model_trainable.tflite,
    model_int8.tflite, model_meta.json, metrics.json}, plus OUT/convert.json.

    Raises:
      UnsupportedUserModelError: lists every unsupported layer or structure, before any work.
    """
    model = saving.load_model(model_path)
    found = compatibility.problems(model)
    if found:
        raise UnsupportedUserModelError(model_path, found)
    splits = source if isinstance(source, data.DataSplits) else data.load(source)
    if int(model.output_shape[-1]) != len(splits.class_names):
        raise ValueError(f"{model_path} has {model.output_shape[-1]} outputs but the data has "
                         f"{len(splits.class_names)} classes {list(splits.class_names)}")
    cfg = prune_config.preset(preset, **prune_overrides)
    prune_dir = os.path.join(out_dir, "prune")
    metrics = pruner.prune_and_finetune(model, splits, prune_dir, cfg, val_size=val_size, split_seed=seed,
                                        preset_name=preset, teacher_path=model_path)
    export_dir = os.path.join(out_dir, "export")
    exported = export_pipeline.export_model(os.path.join(prune_dir, "pruned.keras"), export_dir, data_source=splits,
                                            batch_size=batch_size)
    summary = {"model": model_path, "prune": {k: metrics[k] for k in ("params", "teacher_params",
                                                                      "params_removed_fraction", "flops",
                                                                      "teacher_flops", "test_accuracy",
                                                                      "teacher_test_accuracy")},
               "export": {k: exported.get(k) for k in ("trainable_bytes", "inference_bytes", "trainable_test_accuracy",
                                                       "inference_test_accuracy")},
               "config": dataclasses.asdict(cfg)}
    atomic.write_json(os.path.join(out_dir, "convert.json"), summary)
    logging.info("converted %s: %s -> %s params; device files in %s", model_path, f"{metrics['teacher_params']:,}",
                 f"{metrics['params']:,}", export_dir)
    return summary


def check(model_path: str) -> list[str]:
    """The problems of a model file (empty if it converts)."""
    return compatibility.problems(keras.models.load_model(model_path, compile=False))
