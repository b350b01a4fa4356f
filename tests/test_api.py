"""The conversion API: argument checks, the width setting, state_dict compatibility."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

import slimify
from slimify.analysis.stages import analyze_model
from slimify.errors import SlimifyError


def small() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


X = torch.randn(1, 3, 64, 64)


@pytest.mark.parametrize("switches, message", [
    ((0.0, 1.0), "(0, 1]"),
    ((0.5, 1.5), "(0, 1]"),
    ((-0.5,), "(0, 1]"),
    ((), "empty"),
    ((0.5, 0.5, 1.0), "duplicates"),
    (("half", 1.0), "numbers"),
    (None, "numbers"),
    ((float("nan"), 1.0), "(0, 1]"),
])
def test_bad_switches(switches, message) -> None:
    with pytest.raises(SlimifyError, match=message.replace("(", r"\(").replace("]", r"\]")):
        slimify.convert(small(), switches=switches, example_input=X)


@pytest.mark.parametrize("divisor", [0, -8, 2.5, "8", True])
def test_bad_divisor(divisor) -> None:
    with pytest.raises(SlimifyError, match="divisor"):
        slimify.convert(small(), divisor=divisor, example_input=X)


def test_unsorted_switches_are_sorted() -> None:
    model = slimify.convert(small(), switches=(1.0, 0.25, 0.5), example_input=X)
    assert slimify.switches(model) == (0.25, 0.5, 1.0)


def test_untraceable_model_names_the_problem() -> None:
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            y = self.conv(x)
            if y.sum() > 0:  # control flow on a tensor value: fx cannot trace it
                return y
            return -y

    with pytest.raises(SlimifyError, match="cannot trace DataDependent") as info:
        slimify.convert(DataDependent(), example_input=X)
    assert info.value.__cause__ is not None


def test_not_a_module() -> None:
    with pytest.raises(SlimifyError, match="nn.Module"):
        slimify.convert(lambda x: x)  # type: ignore[arg-type]


def test_convert_twice_is_refused() -> None:
    model = slimify.convert(small(), example_input=X)
    with pytest.raises(SlimifyError, match="already slimmable"):
        slimify.convert(model, example_input=X)


def test_width_must_be_in_range() -> None:  # issue 14: any width between the narrowest switch and 1
    model = slimify.convert(small(), switches=(0.5, 1.0), example_input=X)
    with pytest.raises(SlimifyError, match=r"outside this model's range \[0.5, 1\]"):
        slimify.set_width(model, 0.25)


def test_width_on_plain_model_is_refused() -> None:
    with pytest.raises(SlimifyError, match="convert"):
        slimify.set_width(small(), 0.5)


def test_width_context_restores() -> None:
    model = slimify.convert(small(), example_input=X)
    slimify.set_width(model, 0.75)
    with slimify.width(model, 0.25):
        assert slimify.get_width(model) == 0.25
    assert slimify.get_width(model) == 0.75


def test_same_object_and_class() -> None:
    model = small()
    original_class = type(model)
    out = slimify.convert(model, example_input=X)
    assert out is model and isinstance(model, original_class)
    assert type(model).__name__ == original_class.__name__


def test_state_dict_keeps_original_keys_and_shapes() -> None:
    model = small()
    before = {k: v.shape for k, v in model.state_dict().items()}
    slimify.convert(model, example_input=X)
    after = model.state_dict()
    assert all(after[k].shape == shape for k, shape in before.items())
    extra = set(after) - set(before)
    assert extra and all(".slim_bn." in k for k in extra)


def test_state_dict_round_trip_restores_private_bn() -> None:
    model = slimify.convert(small(), example_input=X)
    model.train()
    with slimify.width(model, 0.25):
        model(torch.randn(4, 3, 64, 64))  # updates only the 0.25 switch's statistics
    other = slimify.convert(small(), example_input=X)
    other.load_state_dict(model.state_dict())
    model.eval(), other.eval()
    with slimify.width(model, 0.25), slimify.width(other, 0.25), torch.no_grad():
        assert torch.equal(model(X), other(X))


def test_analysis_does_not_touch_the_model() -> None:
    model = small()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    analysis = analyze_model(model, example_input=X)
    assert type(model) is torchvision.models.ResNet
    assert not slimify.is_slimmable(model)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert analysis.report.slimmable


def test_tracing_leaves_no_tensor_constants_in_the_model() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * torch.linspace(0.5, 1.0, 8).view(1, 8, 1, 1)  # fx keeps it as a constant

    model = Scaled()
    before = set(vars(model))
    analyze_model(model, example_input=torch.randn(1, 3, 4, 4))
    assert set(vars(model)) == before


def test_private_bn_starts_from_original_statistics() -> None:
    model = small()
    nn.init.normal_(model.bn1.running_mean)
    slimify.convert(model, example_input=X)
    with slimify.width(model, 0.5):
        narrow = model.bn1.running_mean
    assert torch.equal(narrow, model.bn1.slim_bn[1].running_mean)
    assert torch.equal(narrow, model.state_dict()["bn1.running_mean"][: narrow.numel()])


def test_report_lists_fixed_reason() -> None:
    model = slimify.convert(small(), example_input=X)
    text = slimify.report(model).table()
    assert "model output" in text and "slimmable" in text


class _DefaultsNet(nn.Module):
    """forward with a None mask and a bool flag, read by Python ``if``s (timm ViT, Hiera)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False,
                scale: float = 1.0) -> torch.Tensor:
        x = self.conv(x)
        if mask is not None or causal:
            x = x * mask
        return self.fc(x.mean((2, 3)) * scale)


def test_default_arguments_take_the_branch_a_call_takes() -> None:
    model = _DefaultsNet().eval()
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    slimify.convert(model, divisor=1)
    assert torch.allclose(model(x), expected, atol=1e-6)
    with slimify.width(model, 0.5):
        assert model.conv(x).shape[1] == 8


class _StatefulNet(nn.Module):
    """Forward code that caches a derived tensor in a dict slimify was not told about."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.memo: dict[str, torch.Tensor] = {}
        self.last = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.memo["y"] = y
        self.last = y
        return y.mean((2, 3))


def test_tracing_leaves_no_proxies_in_the_model() -> None:
    model = _StatefulNet().eval()
    slimify.convert(model, divisor=1)
    assert model.memo == {} and model.last is None
    out = model(torch.randn(1, 3, 8, 8))
    assert isinstance(out, torch.Tensor) and isinstance(model.memo["y"], torch.Tensor)
