"""Rules real models need beyond the classification zoos (issue 13): nn.TransformerEncoder with
its fused fast path, p-norms (ConvNeXt-V2's GRN), pixel shuffle, torchvision's RoI pooling and
box ops, MViT's helpers. Each on a tiny model: full width exact, every switch runs, every export
equals its switch, and the channels slim."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import slimify

SWITCHES = (0.25, 0.5, 0.75, 1.0)


def _check(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Convert with defaults; width 1.0 equals the original, each export equals its switch."""
    model.eval()
    with torch.no_grad():
        expected = model(x)
    slimify.convert(model, SWITCHES, example_input=x[:1])
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=1e-5 * expected.abs().max().item())
        for w in SWITCHES:
            with slimify.width(model, w):
                got = model(x)
            assert got.shape == expected.shape
            torch.testing.assert_close(slimify.export(model, w).eval()(x), got, rtol=1e-4, atol=1e-5)
    return model


def _widths(model: nn.Module, origin: str) -> list[int]:
    group = next(g for g in slimify.report(model).groups if any(origin in o for o in g.origins))
    assert not group.fixed, group.reason
    return group.channels


class Hybrid(nn.Module):
    """A CNN stem and an nn.TransformerEncoder (the issue's hybrid)."""

    def __init__(self, norm_first: bool = False, heads: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 2, 1), nn.BatchNorm2d(64), nn.ReLU())
        layer = nn.TransformerEncoderLayer(64, heads, 128, dropout=0.0, batch_first=True, norm_first=norm_first,
                                           activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(64), enable_nested_tensor=False)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.stem(x).flatten(2).transpose(1, 2)).mean(1))


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_slims_heads_and_hidden_units(norm_first: bool, monkeypatch) -> None:
    fused = []
    original = torch._transformer_encoder_layer_fwd

    def spy(*args, **kwargs):
        fused.append(args[2])  # num_heads the fast path ran with
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "_transformer_encoder_layer_fwd", spy)
    model = _check(Hybrid(norm_first), torch.randn(2, 3, 16, 16))
    assert _widths(model, "encoder.layers.0.linear1") == [32, 64, 96, 128]
    assert _widths(model, "stem.0") == [16, 32, 48, 64]  # the stream: whole heads of 8 channels
    fused.clear()
    with torch.no_grad(), slimify.width(model, 0.25):  # eval, no grad: PyTorch's fused fast path
        model(torch.randn(2, 3, 16, 16))
    assert fused == [2, 2]


def test_transformer_encoder_layer_alone() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 32, 4, 4)
            self.block = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0)  # sequence first
            self.head = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.block(self.embed(x).flatten(2).permute(2, 0, 1)).mean(0))

    model = _check(Net(), torch.randn(2, 3, 16, 16))
    assert _widths(model, "block.linear1") == [16, 32, 48, 64]


class GRN(nn.Module):
    """ConvNeXt-V2's global response norm as transformers writes it (channels last)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.randn(1, 1, 1, dim)), nn.Parameter(torch.randn(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return self.weight * (x * n) + self.bias + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, 32, 2, 2), nn.Conv2d(32, 32, 7, padding=3, groups=32)
        self.up, self.grn, self.down = nn.Linear(32, 128), GRN(128), nn.Linear(128, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.down(self.grn(F.gelu(self.up(self.dw(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)) + x.norm(2, dim=(2, 3)))


def test_vector_norm_keeps_channels() -> None:
    model = _check(ConvNeXtV2Block(), torch.randn(2, 3, 16, 16))
    assert _widths(model, "up") == [32, 64, 96, 128]
    assert _widths(model, "stem") == [8, 16, 24, 32]


class SuperRes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down, self.shuffle = nn.PixelUnshuffle(2), nn.PixelShuffle(2)
        self.body = nn.Conv2d(12, 32, 3, padding=1)
        self.expand = nn.Conv2d(32, 16 * 4, 3, padding=1)
        self.tail = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shuffle(self.expand(F.relu(self.body(self.down(x)))))
        return self.tail(F.pixel_shuffle(F.pixel_unshuffle(y, 2) * 2, 2))


def test_pixel_shuffle_slims_in_blocks() -> None:
    model = _check(SuperRes(), torch.randn(2, 3, 8, 8))
    assert _widths(model, "expand") == [16, 32, 48, 64]  # whole blocks of 4 = one output channel each
    assert _widths(model, "body") == [8, 16, 24, 32]


class RoIHead(nn.Module):
    """Backbone features pooled per box (RoIAlign / MultiScaleRoIAlign), then a box classifier."""

    def __init__(self, multiscale: bool) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 32, 3, 2, 1), nn.Conv2d(32, 32, 3, 2, 1)
        self.pool = torchvision.ops.MultiScaleRoIAlign(["p1", "p2"], 4, 2) if multiscale else None
        self.fc, self.cls = nn.Linear(32 * 16, 64), nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = F.relu(self.c1(x))
        p2 = F.relu(self.c2(p1))
        boxes = torch.tensor([[0.0, 0.0, 15.0, 15.0], [4.0, 2.0, 30.0, 28.0]])
        if self.pool is not None:
            crops = self.pool({"p1": p1, "p2": p2}, [boxes, boxes], [(32, 32), (32, 32)])
        else:  # the op torchvision.ops.roi_align runs, on a Tensor[K, 5] of (image index, box)
            rois = torch.cat([torch.tensor([[0.0], [1.0]]), boxes], 1)
            crops = torch.ops.torchvision.roi_align(p2, rois, 0.25, 4, 4, 2, False)
        logits = self.cls(F.relu(self.fc(crops.flatten(1))))
        keep = torchvision.ops.nms(boxes, logits[:2].amax(1), 0.5)
        return logits, keep


@pytest.mark.parametrize("multiscale", [False, True])
def test_roi_pooling_passes_channels(multiscale: bool) -> None:
    model, x = RoIHead(multiscale).eval(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, _ = model(x)
    slimify.convert(model, SWITCHES, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], expected)
        for w in SWITCHES:
            with slimify.width(model, w):
                got, keep = model(x)
            assert got.shape == expected.shape and keep.ndim == 1
            torch.testing.assert_close(slimify.export(model, w).eval()(x)[0], got)
    assert _widths(model, "c2")[1] == 16 and _widths(model, "fc")[1] == 32
    assert next(g for g in slimify.report(model).groups if any("cls" in o for o in g.origins)).fixed


def test_mvit_unsqueeze_helpers() -> None:
    from torchvision.models.video import mvit

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.mix, self.head = nn.Linear(3, 32), nn.Linear(32, 32), nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.embed(x.flatten(2).transpose(1, 2))  # (B, T·H·W, C)
            heads, dims = mvit._unsqueeze(tokens, 4, 1)  # (B, 1, N, C), as MViT's attention does
            mixed = mvit._squeeze(self.mix(heads), 4, 1, dims)
            return self.head(mvit._add_shortcut(mixed, tokens, True).mean(1))

    model = _check(Net(), torch.randn(2, 3, 2, 4, 4))
    assert _widths(model, "embed") == [8, 16, 24, 32] and _widths(model, "mix") == [8, 16, 24, 32]


def test_mvit_relative_positions() -> None:
    from torchvision.models.video import mvit

    class Attention(nn.Module):
        """MViT's attention with decomposed relative positions, on a 2×2×2 grid plus a class token."""

        def __init__(self, dim: int = 32, heads: int = 4) -> None:
            super().__init__()
            self.num_heads, self.head_dim = heads, dim // heads
            self.embed, self.qkv, self.proj = nn.Linear(3, dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, 5)
            self.rel_pos_h, self.rel_pos_w, self.rel_pos_t = (nn.Parameter(torch.randn(3, dim // heads)) for _ in range(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            tokens = self.embed(torch.cat([x.flatten(2).mean(2, keepdim=True), x.flatten(2)], 2).transpose(1, 2))
            q, k, v = self.qkv(tokens).reshape(b, 9, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(dim=2)
            attn = mvit._add_rel_pos(q @ k.transpose(-1, -2), q, (2, 2, 2), (2, 2, 2), self.rel_pos_h, self.rel_pos_w,
                                     self.rel_pos_t)
            out = (attn.softmax(-1) @ v).transpose(1, 2).flatten(2)
            return self.proj(out.mean(1))

    model = _check(Attention(), torch.randn(2, 3, 2, 2, 2))
    assert _widths(model, "qkv")[1] == 48  # half of the heads: 2 of 4 in each of q, k, v
