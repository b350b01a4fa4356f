"""Model code the concrete trace follows part by part (issue 24, class 2): any number of modules
whose tracing fails become leaves on the spot (no cap, one trace), sizes such as ``ndim`` are plain
ints (einops' ``Rearrange`` indexes a dict by ``input.ndim``), and a module made inside forward code
(``nn.ZeroPad2d((1, 0, 1, 0))(x)``) is traced through."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn as nn
from torchvision.models.detection.roi_heads import paste_masks_in_image

import slimify
from slimify.analysis.example_inputs import ExampleCall
from slimify.analysis.trace_concrete import trace_concretely
from slimify.rules.registry import find_module_rule


class Lookup(nn.Module):
    """Indexes a dict by a size: the concrete tracer's size is a proxy, so tracing fails inside."""

    table = {16: 1.0}

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))) * self.table[x.shape[1]] + x


class ManyLookups(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.Sequential(*[Lookup() for _ in range(n)])
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class ByRank(nn.Module):
    """einops' pattern: a recipe looked up by the input's number of dims."""

    recipes = {3: "tokens", 4: "maps"}

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 4, stride=4)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        if self.recipes[f.ndim] == "maps" and f.dim() == 4:
            f = f.flatten(2).transpose(1, 2)
        return self.head((f + self.mlp(f)).mean(1))


class PadInForward(nn.Module):
    """A module made inside forward code, as older model zoos do (TF-style 'same' padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, stride=2)
        self.conv2 = nn.Conv2d(32, 32, 3)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(nn.ZeroPad2d((1, 0, 1, 0))(x)))
        return self.head(self.conv2(x).mean((2, 3)))


def _converted(model: nn.Module, x: torch.Tensor) -> nn.Module:
    expected = model.eval()(x)
    slimify.convert(model, example_input=x)
    with slimify.width(model, 1.0):
        assert torch.allclose(model(x), expected, atol=1e-5)
    with slimify.width(model, 0.5):
        assert model(x).shape == expected.shape
        assert torch.allclose(slimify.export(model, 0.5)(x), model(x), atol=1e-4)
    return model


def _stem_slims(model: nn.Module, origin: str) -> None:
    group = next(g for g in slimify.report(model).groups if origin in g.origins[0])
    assert not group.fixed and group.channels[1] < group.size, group


@pytest.mark.parametrize("n", [3, 12])
def test_any_number_of_parts_that_fail_to_trace(n: int) -> None:
    x = torch.randn(1, 3, 16, 16)
    model = ManyLookups(n)
    _, tracer = trace_concretely(model, ExampleCall.of(x), lambda m: find_module_rule(m) is not None)
    assert tracer.leaves == {f"blocks.{i}" for i in range(n)}  # each once, in one trace
    _converted(model, x)
    fixed = [g for g in slimify.report(model).groups if g.fixed and "cannot trace Lookup" in g.reason]
    assert fixed and all("blocks." in g.reason for g in fixed)


def test_convert_time_grows_with_the_parts_not_their_square() -> None:
    x = torch.randn(1, 3, 16, 16)
    times = {}
    for n in (8, 32):
        start = time.perf_counter()
        slimify.convert(ManyLookups(n).eval(), example_input=x)
        times[n] = time.perf_counter() - start
    assert times[32] < 4 * times[8] * 2.5, times  # 4x the parts; a trace per part would be ~16x


def test_ndim_is_a_plain_int() -> None:
    model = _converted(ByRank(), torch.randn(1, 3, 32, 32))
    _stem_slims(model, "stem")
    _stem_slims(model, "mlp.0")


def test_module_made_in_forward_is_traced_through() -> None:
    model = _converted(PadInForward(), torch.randn(1, 3, 33, 33))
    _stem_slims(model, "conv1")
    _stem_slims(model, "conv2")


class PasteMasks(nn.Module):
    """Mask R-CNN's post-processing: ``paste_masks_in_image`` branches on box values in Python."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mask = nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        return paste_masks_in_image(self.mask(torch.relu(self.stem(x))).sigmoid(), boxes, (32, 32))


def test_detection_post_processing_is_run_for_its_value() -> None:
    x, boxes = torch.randn(2, 3, 14, 14), torch.tensor([[2.0, 3.0, 20.0, 18.0], [0.0, 0.0, 31.0, 31.0]])
    model = PasteMasks().eval()
    expected = model(x, boxes)
    slimify.convert(model, example_input=(x, boxes))
    with slimify.width(model, 1.0):
        assert torch.allclose(model(x, boxes), expected, atol=1e-6)
    _stem_slims(model, "stem")
