"""Tied groups whose units differ plan a common multiple (analysis/common_counts.py): EdgeNeXt's
SplitTransposeBlock pattern, a stream chunked into equal pieces whose concatenation an XCA-style
attention reads as whole heads (``reshape(B, N, 3, heads, -1)``, a channel × channel map) and
writes back as ``reshape(B, N, C)``. Tying the pieces position by position to the heads merges
everything into one class: the stream kept its full width at every switch (the second test)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimify
import slimify.analysis.plan as plan_module
from tests.zoo import macs


class _XCA(nn.Module):
    """Cross-covariance attention (timm's EdgeNeXt/XCiT): the map is head channels × head channels."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.rand(num_heads, 1, 1) + 0.5)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 4, 1).unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        x = (attn.softmax(dim=-1) @ v).permute(0, 3, 1, 2).reshape(B, N, C)
        return self.proj(x)


class TinySplitTranspose(nn.Module):
    """Stem conv → chunk(scales) with depthwise convs chained over the pieces → XCA → classifier."""

    def __init__(self, dim: int = 40, scales: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        width = dim // scales
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(scales))
        self.norm = nn.LayerNorm(dim)
        self.xca = _XCA(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = shortcut = self.stem(x)
        spx = x.chunk(len(self.convs), dim=1)
        spo, sp = [], spx[0]
        for i, conv in enumerate(self.convs):  # each piece added to the previous one's output: tied
            sp = conv(sp if i == 0 else sp + spx[i])
            spo.append(sp)
        x = torch.cat(spo, 1)
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W).permute(0, 2, 1)
        x = x + self.xca(self.norm(x))
        x = self.mlp(x).permute(0, 2, 1).reshape(B, C, H, W)
        return self.head((shortcut + x).mean((2, 3)))


def _stem_channels(model: nn.Module, w: float) -> int:
    """Channels of the stream (the stem's output) at width ``w``, read from the exported model."""
    return slimify.export(model, w).stem.out_channels


@pytest.fixture
def example() -> torch.Tensor:
    return torch.randn(1, 3, 8, 8)


def test_pieces_and_heads_slim_by_a_common_multiple(example: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinySplitTranspose().eval()
    with torch.no_grad():
        expected = model(example)
    full = macs(model, example)
    slimify.convert(model, example_input=example)
    # the stream's 40 channels: 4 tied pieces (whole rows of 4) read as 4 heads of 10 (whole heads):
    # equal counts are multiples of lcm(4, 10) = 20; the groups' own widths (24 at 0.5) are not
    assert [_stem_channels(model, w) for w in (0.25, 0.5, 0.75)] == [20, 20, 20]
    with torch.no_grad():
        assert (model(example) - expected).abs().max() <= 1e-5 * expected.abs().max()
        for w in slimify.report(model).switches:
            with slimify.width(model, w):
                assert model(example).shape == expected.shape
        with slimify.width(model, 0.5):
            half = model(example)
            assert macs(model, example) <= 0.4 * full
    exported = slimify.export(model, 0.5)
    with torch.no_grad():
        assert (exported(example) - half).abs().max() <= 1e-4 * half.abs().max()


def test_without_common_counts_the_stream_stays_full(monkeypatch: pytest.MonkeyPatch, example: torch.Tensor) -> None:
    """The same model with the planner's ties only: the stream keeps its 40 channels at width 0.5
    (what this mechanism changes)."""
    monkeypatch.setattr(plan_module, "common_counts", lambda *args: False)
    torch.manual_seed(0)
    model = slimify.convert(TinySplitTranspose().eval(), example_input=example)
    assert _stem_channels(model, 0.5) == 40
