"""Presets are data: a name picks a frozen config, a few overrides replace fields."""

from __future__ import annotations

import dataclasses
from typing import Mapping, TypeVar

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
