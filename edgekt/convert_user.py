"""Converting a user's Keras model: check it, prune it with knowledge transfer from itself,
and export an on-device-trainable .tflite with app-ready metadata."""

from __future__ import annotations

import dataclasses
import os

from absl import logging

from edgekt import atomic, compatibility, data
from edgekt.errors import UserError
from edgekt.export import pipeline as export_pipeline
from edgekt.models import saving
from edgekt.prune import config as prune_config
from edgekt.prune import pruner


def convert(model_path: str, source: str | data.DataSplits, out_dir: str, *, preset: str = "smoke",
            val_size: int = 1000, seed: int = 0, batch_size: int = 32, resize: bool = False,
            **prune_overrides) -> dict:
    """Checks, prunes (teacher = the user's model) and exports a user's model.

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
    return compatibility.file_problems(model_path)
