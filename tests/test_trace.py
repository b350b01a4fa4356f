"""Shapes are recorded on the meta device when that is cheaper (large layers, few nodes): same
shapes and values as a real run, nothing left behind in the model, a real run when meta fails."""
from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn as nn

import slimify
from slimify.rules import find_module_rule
from slimify.trace import SHAPE_KEY, VALUE_KEY, _meta_is_cheaper, _record_shapes, trace

pytestmark = pytest.mark.usefixtures("one_thread")


def _has_rule(m: nn.Module) -> bool:
    return find_module_rule(m) is not None


class Wide(nn.Module):
    """Few nodes, many parameters: the meta run is the cheaper one."""

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
    assert _meta_is_cheaper(traced.graph_module)
    from_meta = _shapes(traced.graph_module)
    for node in traced.graph.nodes:
        node.meta.pop(SHAPE_KEY, None)
        node.meta.pop(VALUE_KEY, None)
    with torch.no_grad():
        from slimify.trace import _ShapeRecorder
        _ShapeRecorder(traced.graph_module).run(x)
    assert from_meta == _shapes(traced.graph_module)
    assert all(not t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert not getattr(model, "last", torch.zeros(0)).is_meta  # meta tensors stored by forward are put back


def test_small_layers_record_for_real() -> None:
    model = nn.Sequential(*[nn.Conv2d(4, 4, 1) for _ in range(4)])
    traced = trace(model, torch.randn(1, 4, 3, 3), _has_rule)
    assert not _meta_is_cheaper(traced.graph_module)


def test_wide_model_converts_exactly() -> None:
    model, x = Wide(data_dependent=True).eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = model(x)
    slimify.convert(model, (0.5, 1.0), example_input=x)
    with torch.no_grad():
        assert torch.equal(model(x), expected)
        with slimify.width(model, 0.5):
            assert model.b.out_channels == 128 and model(x).shape == expected.shape
    _record_shapes  # noqa: B018 - the function under test, via trace
