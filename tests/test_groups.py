"""Golden tiny models: the channel groups slimify finds are exactly the ones written down."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import slimify
from tests.golden.models import GOLDEN

EXPECTED = yaml.safe_load((Path(__file__).parent / "golden" / "groups.yaml").read_text())


def _groups(model: torch.nn.Module) -> list[tuple]:
    found = []
    for g in slimify.report(model).groups:
        layers = tuple(sorted({o.split(" (")[0] for o in g.origins}))
        found.append((layers, g.size, g.unit, g.fixed))
    return sorted(found)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_groups(name: str) -> None:
    model = GOLDEN[name]().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected_out = model(x)
    slimify.convert(model, example_input=x[:1])
    want = sorted((tuple(sorted(g["layers"])), g["size"], g["unit"], g["fixed"]) for g in EXPECTED[name])
    assert _groups(model) == want
    with torch.no_grad():
        assert torch.allclose(model(x), expected_out, atol=1e-6)
        for w in slimify.switches(model):
            with slimify.width(model, w):
                assert model(x).shape == expected_out.shape


def test_every_golden_model_has_expectations() -> None:
    assert sorted(EXPECTED) == sorted(GOLDEN)


def test_fixed_group_explains_unknown_op() -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 1)
            self.head = torch.nn.Conv2d(16, 8, 1)

        def forward(self, x):
            return self.head(torch.cumsum(self.conv(x), dim=1))  # cumsum has no channel rule

    model = slimify.convert(Odd(), example_input=torch.randn(1, 3, 8, 8))
    fixed = [g for g in slimify.report(model).fixed if any(o.startswith("conv") for o in g.origins)]
    assert fixed and "cumsum" in fixed[0].reason


def test_kept_channels_follow_make_divisible() -> None:
    model = slimify.convert(GOLDEN["flatten_linear"](), switches=(0.3, 1.0), divisor=8,
                            example_input=torch.randn(1, 3, 16, 16))
    fc = [g for g in slimify.report(model).groups if g.origins[0].startswith("fc")][0]
    assert fc.channels == [24, 64]  # make_divisible(64·0.3 = 19.2, 8) = 24 (never 10% below)
