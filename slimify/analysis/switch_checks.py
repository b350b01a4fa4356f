"""The switches a conversion is asked for, checked before and after grouping: numbers in (0, 1],
no duplicates, a usable divisor, and no switch so narrow that every group would round up."""
from __future__ import annotations

import math
from typing import Any

from slimify.analysis.groups import GroupTable
from slimify.errors import SlimifyError

__all__ = ["check_switches", "check_minimum"]


def check_switches(switches: Any, divisor: Any) -> tuple[tuple[float, ...], int | None]:
    try:
        values = tuple(float(s) for s in switches)
    except (TypeError, ValueError) as e:
        raise SlimifyError(f"switches must be numbers in (0, 1], got {switches!r}") from e
    if not values:
        raise SlimifyError("switches is empty: give at least one width in (0, 1], e.g. (0.25, 0.5, 1.0)")
    bad = [s for s in values if not (0.0 < s <= 1.0) or math.isnan(s)]
    if bad:
        raise SlimifyError(f"switches must lie in (0, 1]; got {bad}")
    if len(set(values)) != len(values):
        raise SlimifyError(f"switches contain duplicates: {list(values)}")
    if divisor is not None and (isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1):
        raise SlimifyError(f"divisor must be an integer >= 1 (or None: automatic), got {divisor!r}")
    return tuple(sorted(values)), divisor


def check_minimum(table: GroupTable, switches: tuple[float, ...], name: str) -> None:
    """Refuse a switch at which even the widest slimmable group would keep no channel (C·w < 1):
    every group would be rounded up to its minimum, so the switch would not be the width it says.
    The message names the smallest usable width (1/C of that group). A narrow group alone keeping
    less than one channel is not refused: the plan keeps one unit of it (an SE layer of 2 channels
    at the default 0.25)."""
    sizes = [g.size for g in table.groups if not g.fixed]
    if not sizes or switches[0] * max(sizes) >= 1:
        return
    smallest = math.ceil(1000 / max(sizes)) / 1000
    raise SlimifyError(f"switch {switches[0]:g} is too narrow for {name}: its widest slimmable group of {max(sizes)} "
                       f"channels would keep {switches[0] * max(sizes):.2g} of them; the smallest usable width is "
                       f"{smallest:g}")
