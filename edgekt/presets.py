"""Presets are data: a name picks a frozen config, a few overrides replace fields."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, TypeVar

from edgekt.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config field has a value outside what it accepts (names the field, the value and
    what it must be, so a binary can name its flag instead)."""

    def __init__(self, config_name: str, field: str, value, expected: str):
        self.config_name, self.field, self.value, self.expected = config_name, field, value, expected
        super().__init__(f"{config_name}.{field}={value!r}: must be {expected}; "
                         f"set {field} to a value {expected}")


def choose(presets: Mapping[str, T], name: str, overrides: Mapping[str, object]) -> T:
    """`presets[name]` with `overrides` replaced (the config's checks run again).

    Raises:
      UserError: unknown preset or field name; ConfigError: a field out of range.
    """
    if name not in presets:
        raise UserError(f"preset {name!r}: unknown preset; choose one of {sorted(presets)}")
    base = presets[name]
    fields = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"{type(base).__name__} fields {unknown}: unknown fields; use fields among {sorted(fields)}")
    return dataclasses.replace(base, **overrides)


def check_fields(config, checks: Iterable[tuple[bool, str, str]]) -> None:
    """Raises ConfigError for the first failed (ok, field, expected) check of a config
    dataclass, naming the config, the field, what it must be and the value received."""
    for ok, field, expected in checks:
        if not ok:
            raise ConfigError(type(config).__name__, field, getattr(config, field), expected)
