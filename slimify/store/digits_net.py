"""The small digits CNN that the demo, the tests and the accuracy benchmark train on 2 CPU cores in
seconds (``slimify:digitsnet`` in :mod:`slimify.store.sources`), which rounds channels like the conversion plan."""
from __future__ import annotations

import torch.nn as nn

from slimify.analysis.plan import make_divisible

__all__ = ["DigitsNet"]


class DigitsNet(nn.Sequential):
    """A VGG-style CNN for 3x32x32 inputs: five conv-BN-ReLU layers, global pooling, a linear head.

    ``width`` builds the plain model a slimmable one runs at that switch (channels rounded like
    the conversion plan), e.g. for individually trained baselines. About 7.6 MFLOPs at width 1.

        >>> DigitsNet()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, channels: tuple[int, int, int] = (16, 32, 64),
                 divisor: int = 8):
        c1, c2, c3 = (min(c, make_divisible(c * width, divisor)) for c in channels)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        super().__init__(
            *block(3, c1), *block(c1, c1), nn.MaxPool2d(2),  # 32 -> 16
            *block(c1, c2), *block(c2, c2), nn.MaxPool2d(2),  # 16 -> 8
            *block(c2, c3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, num_classes),
        )
