"""Presets are data: a name picks a frozen config, a few overrides replace fields."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, TypeVar

from edgekt.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config field has a value outside what it accepts (names the field, the value and
    what it must be, so a binary can name its flag instead)."""

    def __init__(self, config_name: str, field: str, value, expected: str, todo: str | None = None):
        self.config_name, self.field, self.value, self.expected = config_name, field, value, expected
        self.todo = todo or advice(expected)
        super().__init__(f"{config_name}.{field}={value!r}: must be {expected}; {self.todo}")


def advice(expected: str) -> str:
    """What to do about a value that is not `expected` (e.g. "> 0", "in (0, 1]", "one of ...")."""
    if expected[:1] in "<>=!" or expected.startswith("in "):
        return f"pass a value {expected}"
    return f"pass {expected}"


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


def check_fields(config, checks: Iterable[tuple]) -> None:
    """Raises ConfigError for the first failed (ok, field, expected[, what to do]) check of a
    config dataclass, naming the config, the field, what it must be and the value received."""
    if isinstance(getattr(config, "seed", None), int):  # every seeded config: numpy refuses negative seeds
        checks = [(config.seed >= 0, "seed", ">= 0"), *checks]
    for ok, field, expected, *todo in checks:
        if not ok:
            raise ConfigError(type(config).__name__, field, getattr(config, field), expected, *todo)
