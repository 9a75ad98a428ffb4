"""Presets are data: a name picks a frozen config, a few overrides replace fields."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, TypeVar

T = TypeVar("T")


def choose(presets: Mapping[str, T], name: str, overrides: Mapping[str, object]) -> T:
    """`presets[name]` with `overrides` replaced (the config's checks run again).

    Raises:
      ValueError: unknown preset or field name.
    """
    if name not in presets:
        raise ValueError(f"unknown preset; expected one of {sorted(presets)}. Received: {name!r}")
    base = presets[name]
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {type(base).__name__} fields {unknown}; fields are {sorted(fields)}")
    return dataclasses.replace(base, **overrides)


def check_fields(config, checks: Iterable[tuple[bool, str, str]]) -> None:
    """Raises for the first failed (ok, field, expected) check of a config dataclass, naming the
    config, the field, what it must be and the value received."""
    for ok, field, expected in checks:
        if not ok:
            raise ValueError(f"{type(config).__name__}.{field} must be {expected}. "
                             f"Received: {field}={getattr(config, field)!r}")
