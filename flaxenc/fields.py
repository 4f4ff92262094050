"""Dataclass fields that declare their allowed values, for config sections (flaxenc.optim.OptimizerConfig, train/).

`field(default, allowed=Range(0, 1))` records the range (or a tuple of choices) in the field's
metadata, and `resume=False` marks a field a resumed run may change; `check_fields` checks every
declared field of a dataclass and names the first that is out of range.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class Range:
    """Numbers from low to high (None: unbounded); *_open excludes that end. NaN and infinity are never in it."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: Any) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low}"
        return f"{'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


POSITIVE, NON_NEGATIVE, AT_LEAST_ONE = Range(0, low_open=True), Range(0), Range(1)
BELOW_ONE = Range(0, 1, high_open=True)  # [0, 1): dropout rates, Adam betas


def field(default: Any = dataclasses.MISSING, *, allowed: Range | tuple | None = None, resume: bool = True, **kwargs):
    """A dataclass field with its allowed values (a Range, or a tuple of choices) and whether resume compares it."""
    return dataclasses.field(default=default, metadata={"allowed": allowed, "resume": resume}, **kwargs)


def check_value(value: Any, allowed: Range | tuple, key: str) -> None:
    """ValueError naming `key` when `value` is outside `allowed` (choices compare strings in any case)."""
    if isinstance(allowed, Range):
        if value not in allowed:
            raise ValueError(f"{key}: {value!r} is out of range; allowed: {allowed}")
    elif (value.lower() if isinstance(value, str) else value) not in allowed:
        raise ValueError(f"{key}: {value!r} is not one of {', '.join(map(repr, allowed))}")


def check_fields(instance: Any, prefix: str = "") -> None:
    """Checks each field of the dataclass `instance` that declares its allowed values (not nested ones)."""
    for item in dataclasses.fields(instance):
        allowed, value = item.metadata.get("allowed"), getattr(instance, item.name)
        if allowed is not None and value is not None:
            check_value(value, allowed, f"{prefix}.{item.name}" if prefix else item.name)
