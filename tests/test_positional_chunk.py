"""``chunk`` by position (rules/segments.py): ShuffleNetV2's channel shuffle followed by
``chunk(2)`` ties channels into ever larger units when pieces keep their identity; splitting
whatever is active instead lets every block slim. Checked here on a small ShuffleNet-like model
and, for contrast, on a CSP-like chunk that keeps identities (and stays reorderable)."""
from __future__ import annotations

import torch
import torch.nn as nn

import slimify
from tests.zoo import macs


def _shuffle(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(nn.Conv2d(half, half, 1), nn.BatchNorm2d(half), nn.ReLU(),
                                    nn.Conv2d(half, half, 3, padding=1, groups=half), nn.BatchNorm2d(half),
                                    nn.Conv2d(half, half, 1), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return _shuffle(torch.cat([a, self.branch(b)], 1))


class TinyShuffleNet(nn.Module):
    def __init__(self, c: int = 32, blocks: int = 6) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(*[_Block(c) for _ in range(blocks)])
        self.head = nn.Sequential(nn.Conv2d(c, 64, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class TinyCSP(nn.Module):
    """A conv's output chunked in two: the pieces keep their identity (whole pairs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.left, self.right = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv(x).relu().chunk(2, dim=1)
        return self.fc(torch.cat([self.left(a), self.right(b)], 1).mean((2, 3)))


def _randomise_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, std=0.1)
            m.running_mean.normal_(std=0.1)
            m.running_var.uniform_(0.5, 1.5)


def _tiny_shufflenet() -> tuple[TinyShuffleNet, torch.Tensor, torch.Tensor]:
    """The model with trained-looking BatchNorms, an input and the model's output on it."""
    torch.manual_seed(0)
    model = TinyShuffleNet().eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 16, 16)
    return model, x, model(x)


def test_shufflenet_like_blocks_slim_and_stay_exact() -> None:
    model, x, expected = _tiny_shufflenet()
    full = macs(model, x[:1])
    slimify.convert(model, divisor=2, example_input=x[:1])
    with torch.no_grad():
        assert (model(x) - expected).abs().max() <= 1e-5 * expected.abs().max()
    with slimify.width(model, 0.5):
        assert macs(model, x[:1]) / full <= 0.35
        narrow = model(x)
    plain = slimify.export(model, 0.5)
    assert plain.blocks[3].branch[0].in_channels == 8  # really narrower, every block
    assert torch.allclose(plain(x), narrow, atol=1e-5)
    analysis = slimify.state.get_state(model).record.analysis
    assert analysis.space.ordered, "the stacked shuffles need chunk by position"


def test_reorder_leaves_position_matched_groups_in_order() -> None:
    model, x, expected = _tiny_shufflenet()
    slimify.convert(model, divisor=2, example_input=x[:1], reorder="l1")
    result = slimify.state.get_state(model).record.reorder
    assert any("matched by position" in why for why in result.skipped.values())
    with torch.no_grad():
        assert (model(x) - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_a_plain_chunk_keeps_identities() -> None:
    torch.manual_seed(0)
    model = TinyCSP().eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    slimify.convert(model, divisor=2, example_input=x[:1])
    analysis = slimify.state.get_state(model).record.analysis
    assert not analysis.space.ordered
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-6)
    with slimify.width(model, 0.5):
        assert torch.allclose(slimify.export(model, 0.5)(x), model(x), atol=1e-5)
