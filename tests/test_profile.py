"""Profiling and picking (issue 7): every switch is measured with consistent, ordered costs,
memory is counted by a stated method, results round-trip through JSON/CSV/PNG, and pick
returns the widest switch within all budgets."""
from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import slimify
from slimify.deploy.extract import active_params, export
from slimify.deploy.measure import MEMORY_METHOD, ProfileResult, SwitchProfile, input_shape, measure_memory
from slimify.errors import SlimifyError
from slimify.selection.budget import parse_amount, pick
from slimify.store.sources import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    return slimify.convert(TinyNet(), example_input=torch.randn(1, 3, 32, 32)).eval()


@pytest.fixture(scope="module")
def result(tiny: nn.Module) -> ProfileResult:
    return slimify.profile(tiny, input_size=(2, 3, 32, 32), runs=3, warmup=1, threads=1)


def test_every_switch_is_measured_consistently(tiny: nn.Module, result: ProfileResult) -> None:
    assert [r.width for r in result.rows] == [0.25, 0.5, 0.75, 1.0]
    assert (result.input_size, result.threads, result.runs, result.device) == ((2, 3, 32, 32), 1, 3, "cpu")
    x = torch.randn(2, 3, 32, 32)
    for r in result.rows:
        assert r.params == active_params(tiny, r.width) == sum(p.numel() for p in export(tiny, r.width).parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad(), slimify.width(tiny, r.width):
            tiny(x)
        assert r.flops == counter.get_total_flops() and r.macs == r.flops // 2
        assert 0 < r.latency_ms <= r.latency_p90_ms
        assert 0 < r.activation_mb < r.memory_mb
    for narrow, wide in zip(result.rows, result.rows[1:]):
        assert narrow.params < wide.params and narrow.flops < wide.flops and narrow.memory_mb < wide.memory_mb
    assert result.rows[0].flops < 0.2 * result.rows[-1].flops  # width 0.25 keeps about 1/16 of the MACs
    assert slimify.get_width(tiny) == 1.0 and torch.get_num_threads() == 1


def test_slim_mode_measures_the_same_work(tiny: nn.Module, result: ProfileResult) -> None:
    slim = slimify.profile(tiny, input_size=(2, 3, 32, 32), runs=2, warmup=0, mode="slim", widths=[0.5, 1.0])
    assert [r.width for r in slim.rows] == [0.5, 1.0] and slim.mode == "slim"
    for r in slim.rows:
        assert (r.params, r.flops) == (result.row(r.width).params, result.row(r.width).flops)
    # the slimmable model keeps every full tensor in memory, the exported one only its own
    assert slim.row(0.5).memory_mb > result.row(0.5).memory_mb


def test_memory_counts_the_tensors_a_forward_allocates() -> None:
    conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 32, 32)
    total, activation = measure_memory(conv, x)
    out_bytes = 16 * 32 * 32 * 4
    assert out_bytes <= activation * 2**20 <= 3 * out_bytes
    fixed = (conv.weight.numel() + x.numel()) * 4
    assert total * 2**20 == pytest.approx(fixed + activation * 2**20)
    chain = nn.Sequential(*[nn.Conv2d(16, 16, 3, padding=1) for _ in range(6)])  # outputs freed one by one
    _, chained = measure_memory(chain, torch.randn(1, 16, 32, 32))
    assert chained * 2**20 <= 3 * out_bytes
    assert "TorchDispatchMode" in MEMORY_METHOD["cpu"] and "max_memory_allocated" in MEMORY_METHOD["cuda"]


def test_results_are_data_table_json_csv_png(result: ProfileResult, tmp_path) -> None:
    table = result.table()
    assert "ms (median)" in table and "1 thread(s)" in table and "memory:" in table
    assert all(f"{r.params:,}" in table for r in result.rows)
    data = json.loads(result.to_json(tmp_path / "p.json").read_text())
    assert [r["width"] for r in data["rows"]] == [0.25, 0.5, 0.75, 1.0] and data["threads"] == 1
    assert data["memory_method"] == MEMORY_METHOD["cpu"]
    with (result.to_csv(tmp_path / "p.csv")).open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["params"]) for r in rows] == [r.params for r in result.rows] and rows[0]["input_size"] == "2x3x32x32"
    png = result.plot(tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    with pytest.raises(SlimifyError, match="already exists"):
        result.to_json(tmp_path / "p.json")
    result.to_json(tmp_path / "p.json", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p.json", "p.png"]


@pytest.mark.parametrize("kwargs, message", [
    ({"runs": 0}, "runs must be"), ({"mode": "fast"}, "mode must be"), ({"threads": 0}, "threads must be"),
    ({"widths": [0.1]}, "outside this model's range"), ({"input_size": (0, 3)}, "input size"),
])
def test_profile_refuses_bad_arguments(tiny: nn.Module, kwargs: dict, message: str) -> None:
    with pytest.raises(SlimifyError, match=message):
        slimify.profile(tiny, **{"input_size": 32, **kwargs})


def test_input_shape_forms() -> None:
    assert input_shape(64) == (1, 3, 64, 64)
    assert input_shape((3, 32, 48)) == (1, 3, 32, 48) and input_shape([8, 3, 32, 32]) == (8, 3, 32, 32)


def _fake(*rows: tuple[float, float, int, int, float]) -> ProfileResult:
    result = ProfileResult("Net", (1, 3, 8, 8), "cpu", 1, 1, 0, "export", "test")
    result.rows = [SwitchProfile(w, p, f // 2, f, ms, ms, mb, mb / 2) for w, ms, p, f, mb in rows]
    return result


FAKE = _fake((0.25, 1.0, 100, 1000, 10.0), (0.5, 2.0, 400, 4000, 20.0), (1.0, 8.0, 1600, 16000, 40.0))


@pytest.mark.parametrize("budgets, width", [
    ({"latency_ms": 2.0}, 0.5), ({"latency_ms": 100}, 1.0), ({"latency_ms": 1.5}, 0.25),
    ({"flops": 4000}, 0.5), ({"params": 1599}, 0.5), ({"memory_mb": 40}, 1.0),
    ({"latency_ms": 10, "memory_mb": 25}, 0.5), ({"params": 1e9, "flops": 1500}, 0.25),
])
def test_pick_returns_the_widest_switch_within_every_budget(budgets: dict, width: float) -> None:
    assert pick(FAKE, **budgets).width == width


def test_pick_explains_when_nothing_fits() -> None:
    with pytest.raises(SlimifyError, match=r"no switch fits.*width 0.25.*latency_ms 1 > 0.5"):
        pick(FAKE, latency_ms=0.5, memory_mb=100)
    with pytest.raises(SlimifyError, match="at least one budget"):
        pick(FAKE)
    with pytest.raises(SlimifyError, match="must be positive"):
        pick(FAKE, flops=-1)


@pytest.mark.parametrize("text, value", [("300k", 3e5), ("5M", 5e6), ("1.5G", 1.5e9), ("2e6", 2e6), ("7", 7.0),
                                         (" 4 m ", 4e6), (12, 12.0)])
def test_parse_amount(text, value: float) -> None:
    assert parse_amount(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "five", "1.5X", "-3M", "0"])
def test_parse_amount_refuses(text: str) -> None:
    with pytest.raises(SlimifyError):
        parse_amount(text)
