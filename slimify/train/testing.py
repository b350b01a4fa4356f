"""Tiny slimmable models for tests and benchmarks: a converted DigitsNet."""
from __future__ import annotations

import torch.nn as nn

from slimify.store.digits_net import DigitsNet
from slimify.train.resolve import convert_spec

__all__ = ["slim_digitsnet"]


def slim_digitsnet(switches: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0), divisor: int = 4,
                   channels: tuple[int, int, int] = (16, 32, 64)) -> nn.Module:
    """A DigitsNet converted to ``switches``."""
    model = DigitsNet(num_classes=10, channels=channels)
    spec = {"switches": list(switches), "divisor": divisor, "input_size": [3, 32, 32]}
    return convert_spec(model, spec)
