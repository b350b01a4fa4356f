"""A model that returns features keeps its output shape at every width: channels that layers
inside the model also read (a residual stream) slim and narrow switches pad them back with
zeros; channels made only for the caller (logits, a final projection) keep their size."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import slimify
from slimify.analysis.space import UNREAD_OUTPUT_REASON
from slimify.deploy.extract import check_onnx, to_onnx
from slimify.store.sources import create

pytestmark = pytest.mark.usefixtures("one_thread")

SWITCHES = (0.25, 0.5, 0.75, 1.0)
X = torch.randn(2, 3, 8, 8)


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Features(nn.Module):
    """A residual stream, pooled and returned: a backbone built with num_classes=0."""

    def __init__(self, heads: int = 0, project: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.blocks = nn.Sequential(Residual(32), Residual(32))
        self.norm = nn.LayerNorm(32)
        self.heads = nn.ModuleList(nn.Linear(32, 10) for _ in range(heads))
        self.proj = nn.Linear(32, 16) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.blocks(self.stem(x)).mean((2, 3)))
        if self.proj is not None:
            return self.proj(x)
        if self.heads:
            return sum(h(x) for h in self.heads) / len(self.heads)  # DeiT-distilled style
        return x


def _converted(model: nn.Module) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    with torch.no_grad():
        expected = model(X)
    slimify.convert(model, SWITCHES, divisor=1, example_input=X)
    return model, expected


def _macs(model: nn.Module, w: float) -> int:
    with slimify.width(model, w), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(X)
    return counter.get_total_flops()


def test_feature_output_slims_and_is_padded_with_zeros() -> None:
    model, expected = _converted(Features())
    assert slimify.report(model).padded_output == [8, 16, 24, 32]
    assert "pad the rest with zeros" in slimify.report(model).table()
    with torch.no_grad():
        assert torch.equal(model(X), expected)
        for w, k in zip(SWITCHES, (8, 16, 24, 32)):
            with slimify.width(model, w):
                y = model(X)
            assert y.shape == expected.shape
            assert torch.all(y[:, k:] == 0) and torch.all(y[:, :k].abs().sum(1) > 0)
    assert _macs(model, 0.5) < 0.35 * _macs(model, 1.0)  # the stream slims: MACs fall quadratically


def test_reordering_leaves_returned_features_in_their_order() -> None:
    model = Features().eval()
    with torch.no_grad():
        expected = model(X)
    slimify.convert(model, SWITCHES, divisor=1, example_input=X, reorder="l1")
    with torch.no_grad():
        assert torch.allclose(model(X), expected, atol=1e-5)
    skipped = model._slimify_state.record.reorder.skipped
    assert any("in this order" in reason for reason in skipped.values())


def test_exported_width_pads_like_the_slimmable_model(tmp_path) -> None:
    model, _ = _converted(Features())
    plain = slimify.export(model, 0.5).eval()
    assert isinstance(plain, nn.Sequential) and isinstance(plain[1], nn.ZeroPad1d)
    assert not plain[0]._forward_hooks  # no slimify hook left behind
    with torch.no_grad(), slimify.width(model, 0.5):
        assert torch.allclose(plain(X), model(X), atol=1e-6)
    assert plain[0].stem.out_channels == 16
    path = to_onnx(model, 0.5, tmp_path / "w050.onnx", example=X)
    assert check_onnx(path, plain, X) <= 1e-4 * plain(X).abs().max().item()
    full = slimify.export(model, 1.0)
    assert not isinstance(full, nn.Sequential)  # nothing to pad at full width


@pytest.mark.parametrize("kind", ["classifier", "two heads averaged", "final projection"])
def test_outputs_made_only_for_the_caller_keep_their_size(kind: str) -> None:
    model = Features(heads=2 if kind == "two heads averaged" else 1 if kind == "classifier" else 0,
                     project=kind == "final projection")
    model, expected = _converted(model)
    report = slimify.report(model)
    assert report.padded_output is None
    assert any(g.reason == UNREAD_OUTPUT_REASON and g.size == expected.shape[-1] for g in report.fixed)
    assert report.slimmable  # the stream inside still slims
    with torch.no_grad(), slimify.width(model, 0.25):
        y = model(X)
    assert y.shape == expected.shape and torch.all(y.abs().sum(0) > 0)  # every output computed, none padded


def test_timm_feature_model_saves_and_loads(tmp_path) -> None:
    x = torch.randn(1, 3, 32, 32)
    model = create("vit_tiny_patch16_224", num_classes=0, img_size=32).eval()
    with torch.no_grad():
        expected = model(x)
    slimify.convert(model, SWITCHES, example_input=x)
    assert slimify.report(model).padded_output == [48, 96, 144, 192]
    loaded = slimify.load(slimify.save(model, tmp_path / "features.slim")).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
        with slimify.width(model, 0.5), slimify.width(loaded, 0.5):
            assert torch.equal(loaded(x), model(x)) and loaded(x).shape == expected.shape


class RmsNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.weight = nn.Parameter(torch.rand(16) + 0.5)
        self.normalized_shape = (16,)  # as timm's RmsNorm keeps it: must follow the width
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(F.rms_norm(t, self.normalized_shape, self.weight, 1e-6)).mean(1)


def test_functional_rms_norm_serves_its_weight_narrow() -> None:
    model = RmsNormNet()
    with torch.no_grad():
        expected = model(X)
    slimify.convert(model, SWITCHES, divisor=1, example_input=X)
    with torch.no_grad():
        assert torch.equal(model(X), expected)
        with slimify.width(model, 0.5):
            assert model.weight.shape == (8,) and model.normalized_shape == (8,) and model(X).shape == expected.shape
    assert all("rms_norm" not in g.reason for g in slimify.report(model).fixed)


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "efficientnet_b0"])
def test_timm_backbones_without_classifier_pad_their_features(name: str) -> None:
    x = torch.randn(1, 3, 64, 64)
    model = create(name, num_classes=0).eval()
    with torch.no_grad():
        expected = model(x)
    slimify.convert(model, SWITCHES, example_input=x)
    widths = slimify.report(model).padded_output
    assert widths is not None and widths[-1] == expected.shape[-1] and widths[1] == expected.shape[-1] // 2
    with torch.no_grad():
        assert torch.equal(model(x), expected)
        with slimify.width(model, 0.5):
            narrow = model(x)
        assert narrow.shape == expected.shape and torch.all(narrow[:, widths[1]:] == 0)
        assert torch.allclose(slimify.export(model, 0.5).eval()(x), narrow, atol=1e-5)
