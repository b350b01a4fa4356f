"""Random small CNNs from a grammar of the channel patterns slimify must handle."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

__all__ = ["BLOCKS", "cnn_specs", "GrammarNet"]

BLOCKS = ("plain", "residual", "concat", "split", "depthwise", "grouped", "se")


@dataclass(frozen=True)
class Spec:
    stem: int  # stem channels (a multiple of 8)
    blocks: tuple[tuple[str, int], ...]  # (kind, width multiple of 8)
    head: str  # "pool" or "flatten"


class Block(nn.Module):
    """One pattern; channel counts are multiples of 8 so every pattern can be built."""

    def __init__(self, kind: str, cin: int, width: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "residual":
            self.a = nn.Conv2d(cin, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.b = nn.Conv2d(width, cin, 1)
            self.cout = cin
        elif kind == "concat":
            self.a = nn.Conv2d(cin, width, 1)
            self.b = nn.Conv2d(cin, width // 2, 3, padding=1)
            self.cout = width + width // 2
        elif kind == "split":
            self.pre = nn.Conv2d(cin, 2 * width, 1)
            self.a = nn.Conv2d(width, width, 3, padding=1)
            self.b = nn.Conv2d(width, width, 1)
            self.cout = 2 * width
        elif kind == "depthwise":
            self.a = nn.Conv2d(cin, width, 1)
            self.dw = nn.Conv2d(width, width, 3, padding=1, groups=width)
            self.bn = nn.BatchNorm2d(width)
            self.cout = width
        elif kind == "grouped":
            self.a = nn.Conv2d(cin, width, 1)
            self.g = nn.Conv2d(width, width, 3, padding=1, groups=4)
            self.cout = width
        elif kind == "se":
            self.a = nn.Conv2d(cin, width, 3, padding=1)
            self.reduce = nn.Conv2d(width, 8, 1)
            self.expand = nn.Conv2d(8, width, 1)
            self.cout = width
        else:
            self.a = nn.Conv2d(cin, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.cout = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "residual":
            return x + self.b(F.relu(self.bn(self.a(x))))
        if self.kind == "concat":
            return torch.cat([self.a(x), self.b(x)], 1)
        if self.kind == "split":
            left, right = self.pre(x).chunk(2, dim=1)
            return torch.cat([self.a(left), self.b(right)], 1)
        if self.kind == "depthwise":
            return F.relu(self.bn(self.dw(self.a(x))))
        if self.kind == "grouped":
            return self.g(F.relu(self.a(x)))
        if self.kind == "se":
            y = self.a(x)
            return y * torch.sigmoid(self.expand(F.relu(self.reduce(y.mean((2, 3), keepdim=True)))))
        return F.relu(self.bn(self.a(x)))


class GrammarNet(nn.Module):
    def __init__(self, spec: Spec, classes: int = 10, size: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, spec.stem, 3, padding=1)
        blocks, c = [], spec.stem
        for kind, width in spec.blocks:
            blocks.append(Block(kind, c, width))
            c = blocks[-1].cout
        self.blocks = nn.Sequential(*blocks)
        self.head_kind = spec.head
        self.head = nn.Linear(c * (size // 2) ** 2 if spec.head == "flatten" else c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        if self.head_kind == "flatten":
            return self.head(torch.flatten(F.avg_pool2d(x, 2), 1))
        return self.head(x.mean((2, 3)))


widths = st.sampled_from([8, 16, 24, 32])
cnn_specs = st.builds(
    Spec,
    stem=widths,
    blocks=st.lists(st.tuples(st.sampled_from(BLOCKS), widths), min_size=1, max_size=4).map(tuple),
    head=st.sampled_from(["pool", "flatten"]),
)
