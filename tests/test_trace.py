"""Shapes are recorded on the meta device (same-shape ops skip even their meta kernel): same
shapes and values as a real run, nothing left behind in the model, a real run when meta fails."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import slimify
from slimify.analysis.shape_pass import SHAPE_KEY, VALUE_KEY, _ShapeRecorder, record_on_meta
from slimify.analysis.trace import trace
from slimify.rules import find_module_rule

pytestmark = pytest.mark.usefixtures("one_thread")


def _has_rule(m: nn.Module) -> bool:
    return find_module_rule(m) is not None


class Wide(nn.Module):
    """Wide convs, forward code that stores a tensor on the model, optionally a value read (.item())."""

    def __init__(self, data_dependent: bool = False) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 256, 3, padding=1)
        self.b = nn.Conv2d(256, 256, 3, padding=1)
        self.head = nn.Linear(256, 10)
        self.data_dependent = data_dependent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(self.a(x))
        self.last = y  # forward code that keeps state
        n = y.shape[1]
        if self.data_dependent:
            y = y * (y.abs().max().item() > -1.0)  # needs a value: meta cannot give it
        return self.head(y.mean((2, 3))[:, :n])


def _shapes(gm: fx.GraphModule) -> list:
    return [(n.name, n.meta.get(SHAPE_KEY), n.meta.get(VALUE_KEY)) for n in gm.graph.nodes]


@pytest.mark.parametrize("data_dependent", [False, True])
def test_meta_run_records_what_a_real_run_records(data_dependent: bool) -> None:
    model, x = Wide(data_dependent).eval(), torch.randn(1, 3, 6, 6)
    traced = trace(model, x, _has_rule)
    if not data_dependent:
        record_on_meta(traced.graph_module, (x,))  # no fallback hides a failure here
    from_meta = _shapes(traced.graph_module)
    for node in traced.graph.nodes:
        node.meta.pop(SHAPE_KEY, None)
        node.meta.pop(VALUE_KEY, None)
    with torch.no_grad():
        _ShapeRecorder(traced.graph_module).run(x)
    assert from_meta == _shapes(traced.graph_module)
    assert all(not t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert not getattr(model, "last", torch.zeros(0)).is_meta  # meta tensors stored by forward are put back


def test_wide_model_converts_exactly() -> None:
    model, x = Wide(data_dependent=True).eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = model(x)
    slimify.convert(model, (0.5, 1.0), example_input=x)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
        with slimify.width(model, 0.5):
            assert model.b.out_channels == 128 and model(x).shape == expected.shape


class Attention(nn.Module):
    """Linear on tokens, attention, a norm over a permuted (non-contiguous) tensor, then view."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 2, stride=2)
        self.qkv = nn.Linear(32, 96)
        self.norm = nn.LayerNorm(32)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        B, N, C = t.shape
        q, k, v = self.qkv(t).reshape(B, N, 3, 4, C // 4).permute(2, 0, 3, 1, 4).unbind(0)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        y = self.norm((a + t).permute(0, 2, 1).permute(0, 2, 1))  # a norm of a non-contiguous view
        return self.act(y * 0.5).view(B, N * C)


def test_meta_shortcuts_record_the_real_shapes() -> None:
    model, x = Attention().eval(), torch.randn(2, 3, 8, 8)
    traced = trace(model, x, _has_rule)
    record_on_meta(traced.graph_module, (x,))  # raises if any op could not run on meta
    from_meta = _shapes(traced.graph_module)
    with torch.no_grad():
        _ShapeRecorder(traced.graph_module).run(x)
    assert from_meta == _shapes(traced.graph_module)


@pytest.mark.parametrize("training", [False, True])
def test_trace_puts_every_training_flag_back(training: bool) -> None:
    """A model in eval mode with one part left training (a user's partly frozen model) keeps
    exactly those flags: traced in eval mode, put back module by module."""
    model = Wide().train(training)
    model.b.train(not training)
    before = {name: m.training for name, m in model.named_modules()}
    seen = []
    model.b.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    traced = trace(model, torch.randn(1, 3, 8, 8), has_rule=_has_rule)
    assert {name: m.training for name, m in model.named_modules()} == before
    assert traced.graph_module is not None and seen in ([], [False])  # a leaf called on meta: in eval mode
