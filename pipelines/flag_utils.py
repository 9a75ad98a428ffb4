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
