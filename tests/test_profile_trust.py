"""Profile and pick a user can trust (issue 17): latency repeats until the median settles and
reports its spread, noisy or non-monotone latency is a warning, pick with only FLOPs/params/memory
budgets times nothing, and the plot is accuracy against cost when accuracy is known — otherwise
named for the costs it shows."""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import matplotlib
import pytest
import torch
import torch.nn as nn

import slimify
from slimify.cli.app import main
from slimify.deploy.accuracy import attach_accuracy, read_accuracy, record_evaluation, stored_accuracy
from slimify.deploy.latency import latency_warnings, measure_latency
from slimify.deploy.measure import SwitchProfile
from slimify.deploy.profile_plot import plot_profile
from slimify.errors import SlimifyError
from slimify.selection.budget import pick
from slimify.store.sources import TinyNet

profile_module = importlib.import_module("slimify.deploy.measure")  # the package attribute is the function

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeClock:
    """``time`` for slimify.deploy.latency: calls of :class:`Sleeper` advance it, nothing really sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class Sleeper(nn.Module):
    """Takes the next duration (ms) from a list per call: a machine whose noise the test controls."""

    def __init__(self, durations: list[float], clock: FakeClock) -> None:
        super().__init__()
        self.durations, self.calls, self.clock = durations, 0, clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.now += self.durations[self.calls % len(self.durations)] / 1e3
        self.calls += 1
        return x


def _row(width: float, ms: float | None, iqr: float = 0.0, stable: bool = True) -> SwitchProfile:
    return SwitchProfile(width, 100, 10, 20, ms, ms, 1.0, 0.5, latency_iqr_ms=iqr, latency_runs=10,
                         latency_stable=stable if ms is not None else None)


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return slimify.convert(TinyNet(num_classes=5), example_input=torch.randn(1, 3, 32, 32)).eval()


def test_latency_repeats_until_the_median_settles(monkeypatch) -> None:
    import slimify.deploy.latency

    clock = FakeClock()
    monkeypatch.setattr(slimify.deploy.latency, "time", clock)
    x = torch.zeros(1)
    steady = measure_latency(Sleeper([2.0, 2.1, 1.9], clock), x, runs=4, warmup=1)
    assert steady.stable and steady.runs == 8 and steady.median_ms == pytest.approx(2.0)
    assert steady.iqr_ms == pytest.approx(0.2)
    drifting = Sleeper([1.0] * 5 + [4.0] * 8 + [12.0] * 12 + [30.0] * 20, clock)  # keeps getting slower
    stats = measure_latency(drifting, x, runs=4, warmup=1, max_rounds=3)
    assert not stats.stable and stats.runs == 12 and stats.median_ms == pytest.approx(4.0)


def test_warnings_for_noisy_and_non_monotone_latency() -> None:
    assert latency_warnings([_row(0.25, 1.0), _row(0.5, 2.0), _row(1.0, 4.0)]) == []
    notes = latency_warnings([_row(0.25, 1.0, iqr=0.5), _row(0.5, 2.0), _row(1.0, 1.5)])
    assert any("noisy at width 0.25" in n for n in notes)
    assert any("not monotone in width: 1 measured 1.50 ms, faster than 0.5 (2.00 ms)" in n for n in notes)
    assert "noisy at width 0.5" in latency_warnings([_row(0.25, 1.0), _row(0.5, 2.0, stable=False)])[0]


def test_profile_reports_spread_and_runs(tiny: nn.Module) -> None:
    result = slimify.profile(tiny, input_size=(1, 3, 32, 32), runs=3, warmup=1)
    for row in result.rows:
        assert row.latency_runs is not None and row.latency_runs % 3 == 0 and row.latency_iqr_ms >= 0
    assert "± IQR" in result.table() and "runs" in result.table()


def test_pick_without_a_latency_budget_times_nothing(tiny: nn.Module, tmp_path: Path, capsys, monkeypatch) -> None:
    def no_timing(*args, **kwargs):
        raise AssertionError("latency was measured")

    monkeypatch.setattr(profile_module, "measure_latency", no_timing)
    result = slimify.profile(tiny, input_size=(1, 3, 32, 32), latency=False)
    assert all(r.latency_ms is None for r in result.rows) and "not timed" in result.table()
    assert pick(result, flops=1e12).width == 1.0
    with pytest.raises(SlimifyError, match="latency budget needs measured latency"):
        pick(result, latency_ms=5)
    slimify.save(tiny, tmp_path / "t.slim")
    with pytest.raises(SystemExit) as e:
        main(["pick", str(tmp_path / "t.slim"), "--flops", "1G", "--params", "1M", "--memory-mb", "500"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "picked width 1:" in out and " ms median" not in out


def test_accuracy_files_and_stored_evaluation(tiny: nn.Module, tmp_path: Path) -> None:
    (tmp_path / "eval.json").write_text(json.dumps([{"width": 0.25, "top1": 50.0, "top5": 90.0},
                                                    {"width": 1.0, "top1": 80.0}]))
    (tmp_path / "map.json").write_text(json.dumps({"0.25": 50, "0.5": 60, "0.75": 70, "1.0": 80}))
    (tmp_path / "bad.json").write_text(json.dumps(["nope"]))
    assert read_accuracy(tmp_path / "eval.json") == {0.25: 50.0, 1.0: 80.0}
    with pytest.raises(SlimifyError, match="expected 'slimify eval --json' output"):
        read_accuracy(tmp_path / "bad.json")
    result = slimify.profile(tiny, input_size=(1, 3, 32, 32), latency=False)
    with pytest.raises(SlimifyError, match="has no accuracy for width 0.5"):
        attach_accuracy(result, tiny, tmp_path / "eval.json")
    assert [r.accuracy for r in attach_accuracy(result, tiny, tmp_path / "map.json").rows] == [50, 60, 70, 80]
    record_evaluation(tiny, {0.25: 51.0, 0.5: 61.0, 0.75: 71.0, 1.0: 81.0}, "digits")
    slimify.save(tiny, tmp_path / "t.slim")
    assert stored_accuracy(slimify.load(tmp_path / "t.slim")) == {0.25: 51.0, 0.5: 61.0, 0.75: 71.0, 1.0: 81.0}


def _plotted(result, path: Path, monkeypatch) -> tuple[str, str, str]:
    import matplotlib.pyplot as plt

    kept = []
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    plot_profile(result, path)
    ax = kept[0].axes[0]
    title = " ".join(ax.get_title().split())  # the plot wraps a long title to fit the figure: compare the words
    return title, ax.get_xlabel(), ax.get_ylabel()


def test_plot_is_named_for_what_it_shows(tmp_path: Path, monkeypatch) -> None:
    matplotlib.use("Agg")
    result = profile_module.ProfileResult("Net", (1, 3, 32, 32), "cpu", 1, 5, 1, "export", "m",
                                          rows=[_row(0.5, 1.0), _row(1.0, 2.0)])
    title, x, y = _plotted(result, tmp_path / "cost.png", monkeypatch)
    assert "GFLOPs vs latency (cost only: no accuracy given)" in title and y == "GFLOPs per batch"
    for row, acc in zip(result.rows, (60.0, 75.0)):
        row.accuracy = acc
    title, x, y = _plotted(result, tmp_path / "acc.png", monkeypatch)
    assert "accuracy vs latency" in title and x.startswith("latency, ms") and y == "accuracy, %"
    for row in result.rows:
        row.latency_ms = None
    title, x, y = _plotted(result, tmp_path / "flops.png", monkeypatch)
    assert "accuracy vs FLOPs" in title and x == "GFLOPs per batch"
    assert (tmp_path / "acc.png").stat().st_size > 1000


def test_profile_cli_plots_accuracy_from_a_file(tiny: nn.Module, tmp_path: Path, capsys) -> None:
    slimify.save(tiny, tmp_path / "t.slim", overwrite=True)
    (tmp_path / "acc.json").write_text(json.dumps({"0.25": 50, "0.5": 60, "0.75": 70, "1.0": 80}))
    with pytest.raises(SystemExit) as e:
        main(["profile", str(tmp_path / "t.slim"), "--runs", "2", "--warmup", "0", "--accuracy",
              str(tmp_path / "acc.json"), "--plot", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "accuracy" in out and (tmp_path / "p.png").is_file()
    (tmp_path / "half.json").write_text(json.dumps({"1.0": 80}))
    with pytest.raises(SystemExit) as e:
        main(["profile", str(tmp_path / "t.slim"), "--runs", "2", "--accuracy", str(tmp_path / "half.json")])
    assert e.value.code == 2 and "has no accuracy for width 0.25" in capsys.readouterr().err
