"""What every pipeline binary shares: stray-argument check, preset overrides, config log."""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

from absl import app, flags, logging


def reject_extra_args(argv: Sequence[str]) -> None:
    """Raises a usage error for positional arguments (usually a mistyped flag)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")


def overrides_from_flags(flag_to_field: dict[str, str]) -> dict:
    """Config fields for the flags the user actually set on the command line.

    Args:
      flag_to_field: flag name -> config field name.
    """
    out = {}
    for flag_name, field in flag_to_field.items():
        if flags.FLAGS[flag_name].present:
            out[field] = flags.FLAGS[flag_name].value
    return out


def log_config(stage: str, config, **extra) -> None:
    """Logs the resolved configuration as one JSON line."""
    body = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    logging.info("%s config: %s", stage, json.dumps({**body, **extra}, default=str, sort_keys=True))


def load_teacher_and_split(path: str, val_size: int | None) -> tuple[object, int, int, int]:
    """Loads the cloud model at `path` and the hold-outs the cloud stage used (`val_size`,
    seed and device pool from the metrics.json beside it), so later stages never validate on
    images the teacher trained on, nor train on the device pool.

    Args:
      path: the teacher's `.keras` file.
      val_size: the --val_size flag (None: the teacher's).

    Returns:
      (teacher, val_size, split_seed, device_pool_size).
    """
    from edgekt.prune.pruner import load_teacher

    teacher, info = load_teacher(path)
    teacher_config = info.get("config", {})
    if val_size is None:
        val_size = teacher_config.get("val_size", 5000)
    elif "val_size" in teacher_config and val_size != teacher_config["val_size"]:
        raise app.UsageError(f"--val_size={val_size}: the teacher {path} held out {teacher_config['val_size']} "
                             "validation images; another size would mix images it trained on into validation or "
                             "the device pool; leave --val_size unset")
    split_seed = teacher_config.get("seed", 0)
    if not info:
        logging.warning("no metrics.json beside %s: using val_size=%d, seed=%d; the validation images may overlap "
                        "the teacher's training images", path, val_size, split_seed)
    return teacher, val_size, split_seed, int((info.get("device_pool") or {}).get("size", 0))
