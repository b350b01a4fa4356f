"""Tiny slimmable models for tests and benchmarks: a converted DigitsNet, or, where the core's
``slimify.convert`` is not installed, the same plain net with a width state attached (every code
path runs; widths then change nothing)."""
from __future__ import annotations

import torch.nn as nn

from slimify.state import STATE_ATTR, SlimState
from slimify.store.digits_net import DigitsNet
from slimify.train.resolve import convert_spec, has_module

__all__ = ["has_convert", "slim_digitsnet", "fake_slimmable"]


def has_convert() -> bool:
    """Whether ``slimify.convert`` (the core conversion) is installed."""
    return has_module("slimify.pipeline")


def fake_slimmable(model: nn.Module, switches: tuple[float, ...]) -> nn.Module:
    """Attach a width state to a plain model (for code paths that only need the state API)."""
    setattr(model, STATE_ATTR, SlimState(switches=tuple(sorted(switches))))
    return model


def slim_digitsnet(switches: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0), divisor: int = 4,
                   channels: tuple[int, int, int] = (16, 32, 64), real: bool | None = None) -> nn.Module:
    """A DigitsNet converted to ``switches`` (``real=False`` forces the fake state)."""
    model = DigitsNet(num_classes=10, channels=channels)
    if real is False or (real is None and not has_convert()):
        return fake_slimmable(model, switches)
    spec = {"switches": list(switches), "divisor": divisor, "input_size": [3, 32, 32]}
    return convert_spec(model, spec)
