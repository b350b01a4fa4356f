"""The sandwich rule over continuous widths (US-Nets, Yu & Huang 2019): each step trains the
largest and the smallest width of a range and ``n`` widths drawn uniformly between them, the
narrower ones distilled in place from the largest. Any width of the range then works after BN
calibration, not only the fixed switches (``rewrite/config_slots.py`` serves them).

Beside :func:`slimify.train.losses.step_widths` (fixed switches) so the loop picks one or the
other per recipe (``width_range: [min, max]``, ``sandwich: n``).
"""
from __future__ import annotations

import random
from typing import Any

import torch.nn as nn

from slimify.errors import SlimifyError

__all__ = ["sandwich_widths", "check_width_range", "loss_key", "RANDOM_KEY", "DEFAULT_RANDOM"]

RANDOM_KEY = "random"  # the loss of the random widths of a step, averaged (a log key)
DEFAULT_RANDOM = 2  # random widths per step when the recipe's ``sandwich`` is null (US-Nets uses 2)


def sandwich_widths(width_range: list[float] | tuple[float, float], n: int | None, seed: int, step: int) -> list[float]:
    """Widths of one step, largest first: max, ``n`` uniform draws in (min, max), min. Drawn from
    ``(seed, step)`` only, so all processes and a resumed run draw the same ones."""
    low, high = float(width_range[0]), float(width_range[1])
    rng = random.Random(seed * 1_000_003 + step)
    middle = sorted((rng.uniform(low, high) for _ in range(DEFAULT_RANDOM if n is None else n)), reverse=True)
    return [high, *middle, low]


def check_width_range(model: nn.Module, width_range: list[float] | tuple[float, float]) -> None:
    """Both ends must be widths the model serves (between its narrowest switch and 1)."""
    import slimify
    from slimify.state import slot_of

    if not slimify.is_slimmable(model):
        raise SlimifyError("width_range trains a slimmable model: convert it first")
    for w in width_range:
        slot_of(model, float(w))


def loss_key(position: int, count: int, width: float) -> Any:
    """How a loss is logged: the largest and smallest by width, the random ones together."""
    return width if position in (0, count - 1) else RANDOM_KEY
