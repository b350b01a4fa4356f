"""Rules of the channel table on tiny modules: what each one slims and keeps, asserted on the
groups the analysis finds, plus full width exact and every switch running."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimify
from slimify.analysis.stages import analyze_model
from slimify.rules import MODULE_RULES
from slimify.rules.notrace import trace_through

SWITCHES = (0.25, 0.5, 0.75, 1.0)


def _check(model: nn.Module, x: torch.Tensor, divisor: int = 1) -> nn.Module:
    """Convert, check width 1.0 equals the original and every switch keeps the output shape."""
    torch.manual_seed(0)
    with torch.no_grad():
        expected = model(x)
    slimify.convert(model, SWITCHES, divisor=divisor, example_input=x)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
        for w in SWITCHES:
            with slimify.width(model, w):
                assert model(x).shape == expected.shape
    return model


def _slim_groups(model: nn.Module) -> list:
    return [g for g in slimify.report(model).slimmable]


def _tokens(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Images to (B, N, C) tokens (model inputs are images: their dim 1 holds the channels)."""
    return conv(x).flatten(2).transpose(1, 2)


class MHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, 32, 1)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.out = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _tokens(self.inp, x)
        return self.out(self.attn(h, h, h, need_weights=False)[0] + h)


def test_multihead_attention_slims_whole_heads() -> None:
    model = _check(MHA(), torch.randn(2, 3, 2, 3))
    heads = [g for g in _slim_groups(model) if g.unit == 8]  # head_dim 32 / 4 heads
    assert heads and heads[0].channels[1] == 16  # width 0.5: two of four heads
    with slimify.width(model, 0.5):
        assert model.attn.num_heads == 2 and model.attn.embed_dim == 16


class Rope(nn.Module):
    """Heads meet a table shared by all of them (rotary sin/cos over head_dim)."""

    def __init__(self, rotate_half: bool = False) -> None:
        super().__init__()
        self.num_heads, self.rotate_half = 4, rotate_half
        self.inp = nn.Conv2d(3, 16, 1)
        self.qkv = nn.Linear(16, 96)
        self.register_buffer("table", torch.randn(5, 8))
        self.proj = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _tokens(self.inp, x)
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, 8).permute(2, 0, 3, 1, 4).unbind(0)
        if self.rotate_half:  # EVA's rotary: pairs of head channels swapped, through stack + reshape
            q, k = (t * self.table + torch.stack([-t[..., 1::2], t[..., ::2]], -1).reshape(t.shape) * self.table
                    for t in (q, k))
        else:
            q, k = q * self.table, k * self.table
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, -1))


@pytest.mark.parametrize("rotate_half", [False, True])
def test_table_shared_by_heads_keeps_heads_apart(rotate_half: bool) -> None:
    model = _check(Rope(rotate_half), torch.randn(1, 3, 1, 5))
    heads = [g for g in _slim_groups(model) if "qkv" in " ".join(g.origins)]
    assert len(heads) == 1 and heads[0].size // heads[0].unit == 4  # four separate heads, not one unit


def test_size_read_from_other_tensor() -> None:
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = _tokens(self.inp, x)
            B, N, C = self.a(x).shape
            return self.c(self.b(x).reshape(B, N, C) + 1)

    model = _check(Model(), torch.randn(1, 3, 1, 3))
    with slimify.width(model, 0.5):
        assert model.a.out_features == model.b.out_features  # the read width and the reshaped one agree


class ShortChunk(nn.Module):
    """EdgeNeXt-like: chunk(3) of 10 channels gives 4, 4, 2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 1)
        self.convs = nn.ModuleList([nn.Conv2d(4, 4, 3, padding=1, groups=4) for _ in range(2)])
        self.head = nn.Conv2d(10, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = self.conv(x).chunk(3, dim=1)
        return self.head(torch.cat([self.convs[0](a), self.convs[1](b), c], 1))


def test_chunk_with_a_short_last_piece() -> None:
    model = _check(ShortChunk(), torch.randn(1, 3, 8, 8))
    assert not [g for g in slimify.report(model).fixed if "conv (output" in " ".join(g.origins)]


class ECA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.eca = nn.Conv1d(1, 1, 3, padding=1, bias=False)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        g = self.eca(y.mean((2, 3)).view(y.shape[0], 1, -1)).sigmoid().view(y.shape[0], -1, 1, 1)
        return self.head(y * g)


def test_conv_over_the_channel_axis_keeps_channels_apart() -> None:
    model = _check(ECA(), torch.randn(1, 3, 8, 8))
    group = next(g for g in _slim_groups(model) if "conv (output" in " ".join(g.origins))
    assert group.unit == 1 and group.channels[1] == 8


def test_wide_groups_slim_inside_each_group() -> None:
    model = nn.Sequential(nn.Conv2d(3, 64, 1), nn.Conv2d(64, 64, 3, padding=1, groups=2), nn.Conv2d(64, 4, 1))
    model = _check(model, torch.randn(1, 3, 8, 8))
    with slimify.width(model, 0.5):
        assert model[1].groups == 2 and model[1].weight.shape == (32, 16, 3, 3)


def test_narrow_groups_slim_whole_groups() -> None:
    model = nn.Sequential(nn.Conv2d(3, 32, 1), nn.Conv2d(32, 32, 3, padding=1, groups=8), nn.Conv2d(32, 4, 1))
    model = _check(model, torch.randn(1, 3, 8, 8))
    with slimify.width(model, 0.5):
        assert model[1].groups == 4 and model[1].weight.shape == (16, 4, 3, 3)


def test_transposed_convs() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ConvTranspose2d(16, 16, 2, stride=2, groups=16),
                          nn.ConvTranspose2d(16, 8, 2, stride=2), nn.Conv2d(8, 4, 1))
    model = _check(model, torch.randn(1, 3, 4, 4))
    with slimify.width(model, 0.5):
        assert model[2].weight.shape == (8, 4, 2, 2)


class PadOnes(nn.Module):
    """A constant row padded onto the channels and sliced off again (EfficientViT's LiteMLA)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(self.conv(x), (0, 0, 0, 0, 0, 1), value=1.0)
        return self.head(y[:, :-1] / y[:, -1:])


def test_constant_padding_of_channels() -> None:
    model = _check(PadOnes(), torch.randn(1, 3, 4, 4))
    assert next(g for g in _slim_groups(model) if "conv (output" in " ".join(g.origins)).channels[1] == 8


class Branchy(nn.Module):
    """Forward code that branches on a shape: fx cannot trace it symbolically."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(16, 32, 1), nn.Conv2d(32, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            x = F.pad(x, (0, 1))
        return self.fc2(self.fc1(x).relu())


def test_untraceable_module_is_traced_concretely(request: pytest.FixtureRequest) -> None:
    MODULE_RULES.add(Branchy, trace_through)
    request.addfinalizer(lambda: MODULE_RULES.unregister(Branchy))
    model = _check(nn.Sequential(nn.Conv2d(3, 16, 1), Branchy(), nn.Conv2d(16, 4, 1)), torch.randn(1, 3, 5, 5))
    with slimify.width(model, 0.5):
        assert model[1].fc1.out_channels == 16 and model[0].out_channels == 8


def test_unknown_module_fixes_what_it_touches() -> None:
    MODULE_RULES.unregister(Branchy)

    class Opaque(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.flip(x, dims=[1])  # reverses channels: a prefix cannot follow

    model = nn.Sequential(nn.Conv2d(3, 16, 1), Opaque(), nn.Conv2d(16, 4, 1))
    analysis = analyze_model(model, SWITCHES, 1, torch.randn(1, 3, 4, 4))
    fixed = [g for g in analysis.report.fixed if "0 (output" in " ".join(g.origins)]
    assert fixed and "flip" in fixed[0].reason


def test_a_fixed_group_names_the_line_of_model_code() -> None:
    class Flips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 1)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.flip(self.conv(x), dims=[1]))  # reverses channels

    analysis = analyze_model(Flips(), SWITCHES, 1, torch.randn(1, 3, 4, 4))
    reason = next(g.reason for g in analysis.report.fixed if "conv" in " ".join(g.origins))
    assert f"{__file__}, line" in reason and "in forward: return self.head(torch.flip(" in reason


class SliceBySize(nn.Module):
    """``a[:, :b.shape[1]]``: a slice bound read from another tensor's width."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        return self.head(a[:, :b.shape[1]] + b)


def test_slice_bound_read_from_another_width_follows_it() -> None:
    model = _check(SliceBySize(), torch.randn(2, 3, 4, 4))
    with slimify.width(model, 0.5):
        assert model.b.out_channels == 4 and model.head.in_channels == 4
        assert model.a.out_channels >= 4
