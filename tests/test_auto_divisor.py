"""Default divisor (issue 13): 8, or for a group too narrow for 8 the largest smaller power of two
that keeps every switch near C·w; recorded per group in the report and the .slim file; an
explicit divisor stays a hard setting; .slim files written before (an int divisor) still load."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import slimify
from slimify.analysis.plan import group_divisor
from slimify.store.slimfile import read_config
from slimify.store.sources import create
from tests.slimfiles import rewrite_slim

SWITCHES = (0.25, 0.5, 0.75, 1.0)


@pytest.mark.parametrize("n, unit, expected", [
    (256, 1, 8),  # wide: 64, 128, 192 are multiples of 8
    (24, 1, 2),  # 6, 12, 18: 8 would keep 8 at 0.25 (a third too many), 4 would round 6 to 8
    (16, 1, 4),  # 4, 8, 12
    (40, 1, 2),  # 10, 20, 30
    (4, 64, 8),  # four heads of 64: every divisor keeps whole heads, the largest is kept
])
def test_group_divisor(n: int, unit: int, expected: int) -> None:
    assert group_divisor(n, unit, SWITCHES, 8, auto=True) == expected
    assert group_divisor(n, unit, SWITCHES, 8, auto=False) == 8


class Narrow(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 24, 3), nn.Conv2d(24, 128, 3), nn.Linear(128, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b(self.a(x).relu()).mean((2, 3)))


def _group(model: nn.Module, origin: str):
    return next(g for g in slimify.report(model).groups if any(origin in o for o in g.origins))


def test_default_uses_a_smaller_divisor_only_where_needed() -> None:
    x = torch.randn(1, 3, 12, 12)
    auto = slimify.convert(Narrow(), SWITCHES, example_input=x)
    assert (_group(auto, "a ").divisor, _group(auto, "a ").channels) == (2, [6, 12, 18, 24])
    assert (_group(auto, "b ").divisor, _group(auto, "b ").channels) == (8, [32, 64, 96, 128])
    assert "automatic: 1 narrow groups use a smaller one" in str(slimify.report(auto))
    hard = slimify.convert(Narrow(), SWITCHES, divisor=8, example_input=x)
    assert (_group(hard, "a ").divisor, _group(hard, "a ").channels) == (8, [8, 16, 24, 24])


def test_slim_file_records_divisors_and_old_files_load(tmp_path) -> None:
    x = torch.randn(1, 3, 32, 32)
    model = slimify.convert(create("slimify:tinynet", num_classes=7), SWITCHES, example_input=x).eval()
    path = slimify.save(model, tmp_path / "auto.slim")
    config = read_config(path)["conversion"]
    assert config["divisor"] is None and config["group_divisors"] == [g.divisor for g in slimify.report(model).groups]
    assert slimify.report(slimify.load(path)).groups == slimify.report(model).groups
    explicit = slimify.convert(create("slimify:tinynet", num_classes=7), SWITCHES, divisor=8, example_input=x)
    new = slimify.save(explicit, tmp_path / "explicit.slim")

    def as_before(config: dict) -> None:  # the format written before issue 13: an int, no per-group list
        del config["conversion"]["group_divisors"]

    old = rewrite_slim(new, tmp_path / "old.slim", as_before)
    assert "group_divisors" not in read_config(old)["conversion"]
    loaded = slimify.load(old)
    assert [g.channels for g in slimify.report(loaded).groups] == [g.channels for g in slimify.report(explicit).groups]


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def test_small_model_halves_its_macs_with_defaults() -> None:
    timm = pytest.importorskip("timm")
    x = torch.randn(1, 3, 224, 224)
    kept = {}
    for divisor in (None, 8):
        model = slimify.convert(timm.create_model("mobilenetv3_small_050").eval(), SWITCHES, divisor=divisor,
                                example_input=x)
        full = _macs(model, x)
        with slimify.width(model, 0.5):
            kept[divisor] = _macs(model, x) / full
    # measured: 0.362 with defaults (every group at exactly half gives 0.362 too), 0.408 at divisor 8
    assert kept[None] < 0.37 < kept[8]
