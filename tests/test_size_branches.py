"""A branch on a size of slimming channels compared with a literal no attribute holds (issue 24,
class 3; smp's Linknet decoder: ``if skip is not None and skip.shape[1] != 0:``): the channels keep
their size only where some switch's planned count would flip the comparison."""
from __future__ import annotations

import torch
import torch.nn as nn

import slimify
from tests.test_trace_parts import _converted


class SkipBranch(nn.Module):
    """Adds the skip only when it has channels (with ``wide_only``: only when it has more than 24)."""

    def __init__(self, wide_only: bool = False) -> None:
        super().__init__()
        self.wide_only = wide_only
        self.enc = nn.Conv2d(3, 32, 3, padding=1)
        self.dec = nn.Conv2d(32, 32, 3, padding=1)
        self.head = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor, skip_on: bool = True) -> torch.Tensor:
        skip = torch.relu(self.enc(x))
        y = torch.relu(self.dec(skip))
        if not self.wide_only:
            if skip is not None and skip.shape[1] != 0:
                y = y + skip
        elif skip.shape[1] > 24:  # true at full width (32), false at 0.5 (16): the path would change
            y = y + skip
        return self.head(y)


def _group(model: nn.Module, origin: str):
    return next(g for g in slimify.report(model).groups if any(o.startswith(origin) for o in g.origins))


def test_comparison_no_switch_flips_leaves_the_channels_slimmable() -> None:
    x = torch.randn(1, 3, 8, 8)
    for kwargs in ({}, {"example_kwargs": {"skip_on": True}}):  # symbolic, then the concrete trace
        model = SkipBranch().eval()
        expected = model(x)
        slimify.convert(model, example_input=x, **kwargs)
        group = _group(model, "enc")
        assert not group.fixed and group.channels == [8, 16, 24, 32], group
        with slimify.width(model, 1.0):
            assert torch.allclose(model(x), expected, atol=1e-6)


def test_comparison_a_switch_would_flip_keeps_the_channels() -> None:
    model = SkipBranch(wide_only=True).eval()
    x = torch.randn(1, 3, 8, 8)
    slimify.convert(model, example_input=x, example_kwargs={"skip_on": True})
    group = _group(model, "enc")
    assert group.fixed and "a size compared with 24 decides a branch" in group.reason, group
    assert "test_size_branches.py, line" in group.reason and "would change its answer" in group.reason
    _converted(SkipBranch(wide_only=True), x)  # full width exact, every switch runs, export equals


class StoredShape(nn.Module):
    """MONAI UNETR's ``proj_feat``: tokens viewed back to a map through a stored shape list."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden_size = 48
        self.embed = nn.Conv2d(3, 48, 4, stride=4)
        self.mlp = nn.Sequential(nn.Linear(48, 96), nn.GELU(), nn.Linear(96, 48))
        self.proj_view_shape = [2, 2, self.hidden_size]
        self.head = nn.Conv2d(48, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = t + self.mlp(t)
        new_view = [t.size(0)] + self.proj_view_shape
        return self.head(t.view(new_view).permute(0, 3, 1, 2).contiguous())


def test_a_stored_shape_list_follows_the_width() -> None:
    model = _converted(StoredShape(), torch.randn(1, 3, 8, 8))
    group = _group(model, "embed")
    assert not group.fixed and group.channels[1] == 24, group
    with slimify.width(model, 0.5):
        assert model.proj_view_shape == [2, 2, 24]
    assert model.proj_view_shape == [2, 2, 48]
