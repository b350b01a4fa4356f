"""A model's submodules may have the names of the tracers' own attributes (issue 27): a model with
a submodule ``meta``, ``graph``, ``root`` or ``code`` converts, symbolically and with values, slims
like the same model with other names, and exports; ``training`` is a name torch itself refuses."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimify
from slimify.analysis.trace import trace

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["meta", "graph", "root", "code", "_graph", "_code", "tracer", "leaves", "values"]


def _net(name: str, keyword: bool = False) -> nn.Module:
    """stem → block (the submodule called ``name``) → classifier; ``keyword``: forward(x, *, scale)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.add_module(name, nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                                nn.ReLU()))
            self.fc = nn.Linear(32, 10)

        def forward(self, x: torch.Tensor, *, scale: float = 1.0) -> torch.Tensor:
            return self.fc(self._modules[name](self.stem(x)).mean((2, 3))) * scale

    torch.manual_seed(0)
    return Net().eval()


@pytest.mark.parametrize("name", NAMES)
def test_a_submodule_may_have_a_tracer_attribute_name(name: str, tmp_path) -> None:
    x = torch.randn(2, 3, 16, 16)
    assert not trace(_net(name), x, lambda m: False).concrete  # traced symbolically, not after a failure
    assert trace(_net(name), x, lambda m: False, example_kwargs={"scale": 2.0}).concrete
    reference = slimify.convert(_net("block"), example_input=x)
    for keyword in (False, True):
        model = _net(name, keyword)
        want = model(x)
        slimify.convert(model, example_input=x, example_kwargs={"scale": 1.0} if keyword else None)
        assert [g.channels for g in slimify.report(model).groups] == \
            [g.channels for g in slimify.report(reference).groups]
        assert len(slimify.report(model).slimmable) == 2
        assert torch.equal(model(x), want)  # full width is the original
        assert getattr(model, name) is model._modules[name]  # the model was not renamed or rewired
        with slimify.width(model, 0.5), torch.no_grad():
            assert torch.allclose(slimify.export(model, 0.5)(x), model(x), atol=1e-6)


def test_torch_refuses_a_submodule_named_training() -> None:
    with pytest.raises(KeyError, match="attribute 'training' already exists"):
        nn.Module().add_module("training", nn.Identity())
