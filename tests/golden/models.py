"""Tiny models, one per channel pattern, whose channel groups are written down in groups.yaml."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GOLDEN"]


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = x + self.conv2(F.relu(self.conv1(x)))
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.b = nn.Conv2d(3, 24, 3, padding=1)
        self.mix = nn.Conv2d(40, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.cat([self.a(x), self.b(x)], 1)
        return self.head(self.mix(x).mean((2, 3)))


class Split(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 1)
        self.left = nn.Conv2d(16, 16, 3, padding=1)
        self.right = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        x = torch.cat([self.left(a), self.right(b)], 1)
        return self.head(x.mean((2, 3)))


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 32, 1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.project = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.project(self.dw(self.expand(x))).mean((2, 3)))


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 64, 1)
        self.grouped = nn.Conv2d(64, 32, 3, padding=1, groups=8)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.grouped(self.expand(x)).mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.reduce = nn.Conv2d(32, 8, 1)
        self.expand = nn.Conv2d(8, 32, 1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.conv(x)
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.head((x * gate).mean((2, 3)))


class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(16 * 16, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.flatten(self.pool(self.conv(x)), 1)
        return self.head(F.relu(self.fc(x)))


class Attention(nn.Module):
    def __init__(self, dim: int = 64, num_heads: int = 4) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(B, N, C))
        return self.head(x.mean(1))


GOLDEN: dict[str, type[nn.Module]] = {
    "residual": Residual, "concat": Concat, "split": Split, "depthwise": Depthwise, "grouped": Grouped,
    "squeeze_excite": SqueezeExcite, "flatten_linear": FlattenLinear, "attention": Attention,
}
