"""The Fashion-MNIST accuracy benchmark's plumbing at its smallest setting: one cell of every kind
runs (the retrofit through the CLI), the cache makes a second run do nothing, the report and plot
are written. The accuracy table itself is a benchmark (python -m benchmarks.fashion), not a test."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import benchmarks.fashion as fashion
from benchmarks.fashion_cells import Cell
from slimify.train.idx_data import is_idx_directory
from tests.test_idx_data import FASHION_INSTALLED

# the benchmark sets torch's thread count (its --threads): the fixture puts the suite's back afterwards
pytestmark = [pytest.mark.skipif(not FASHION_INSTALLED, reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)"),
              pytest.mark.usefixtures("one_thread")]

SMOKE_CELLS = [Cell("individual", "1", "resnet", 0), Cell("individual", "0.25", "resnet", 0),
               Cell("slimmable", "distill", "resnet", 0), Cell("slimmable", "shared-bn", "resnet", 0),
               Cell("incremental", "joint-epochs", "resnet", 0), Cell("retrofit", "bn-1", "resnet", 0),
               Cell("slimmable", "sandwich", "resnet", 0), Cell("search", "0.5x", "resnet", 0)]


def test_smoke_run_resumes_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fashion, "cells", lambda s: list(SMOKE_CELLS))
    cache, work = tmp_path / "cells.jsonl", tmp_path / "work"
    argv = ["--setting", "smoke", "--cache", str(cache), "--work", str(work)]
    assert fashion.main(argv) == 0
    entries = [json.loads(line) for line in cache.read_text().splitlines()]
    assert [e["key"] for e in entries] == [c.key for c in SMOKE_CELLS]
    by_key = {e["key"]: e["result"] for e in entries}
    assert set(by_key["resnet/slimmable/distill/seed0"]) == {"0.25", "0.5", "0.75", "1.0"}
    assert {"0.3", "0.6", "0.9"} <= set(by_key["resnet/slimmable/sandwich/seed0"])  # any width, calibrated
    assert set(by_key["resnet/retrofit/bn-1/seed0"]) == {"0.25", "0.5", "0.75", "1.0"}  # through the CLI
    search = by_key["resnet/search/0.5x/seed0"]
    assert search["searched_macs"] <= 0.5 + 1e-6 and search["uniform_macs"] <= search["searched_macs"] + 1e-6
    assert all(0.0 <= v <= 100.0 for r in by_key.values() for k, v in r.items() if not k.endswith(("macs", "width")))
    assert is_idx_directory(work / "fashion-400-200")  # the subset every row reads, CLI included
    assert not list(work.glob("runs/**/checkpoint.pt"))  # each cell's checkpoints go once it is cached
    report = capsys.readouterr().out
    assert "| a. individual (each width trained alone) | 1 |" in report and "8 of 8 cells finished" in report
    assert cache.with_suffix(".png").stat().st_size > 10_000 and "![accuracy vs MACs](cells.png)" in report

    def no_cell(*args: object) -> None:
        raise AssertionError("a cached cell ran again")

    monkeypatch.setattr(fashion, "run_cell", no_cell)
    assert fashion.main(argv) == 0  # everything cached: nothing runs
    assert len(cache.read_text().splitlines()) == len(SMOKE_CELLS)


def test_claims_skip_cells_a_live_process_holds(tmp_path: Path) -> None:
    cell = Cell("individual", "1", "resnet", 0)
    assert fashion._claim(tmp_path, cell)
    assert not fashion._claim(tmp_path, cell)  # held by this (live) process
    (tmp_path / cell.key.replace("/", "_")).write_text("999999999")  # a killed run's claim
    assert fashion._claim(tmp_path, cell) and int((tmp_path / cell.key.replace("/", "_")).read_text()) == os.getpid()


def test_bad_jobs_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert fashion.main(["--jobs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --jobs must be at least 1, got 0"


def test_a_failing_cell_does_not_stop_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    first, second = SMOKE_CELLS[:2]
    monkeypatch.setattr(fashion, "cells", lambda s: [first, second])

    def one_fails(s: object, data_dir: Path, cell: Cell, work: Path) -> dict:
        if cell == first:
            raise RuntimeError("boom")
        return {"1.0": 50.0}

    monkeypatch.setattr(fashion, "run_cell", one_fails)
    cache = tmp_path / "cells.jsonl"
    argv = ["--setting", "smoke", "--cache", str(cache), "--work", str(tmp_path / "work"), "--no-report"]
    assert fashion.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{first.key}: failed: RuntimeError: boom" in err and f"1 cell(s) failed: {first.key}" in err
    assert [json.loads(line)["key"] for line in cache.read_text().splitlines()] == [second.key]
    assert not list((tmp_path / "work" / "claims-smoke").iterdir())  # no claim left behind


def test_budget_trial_trains_with_its_epochs_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import benchmarks.fashion_trials as trials

    ran: list[tuple[str, int]] = []

    def fake_cell(s: fashion.Setting, data_dir: Path, cell: Cell, work: Path) -> dict:
        ran.append((cell.key, s.epochs))
        return {float(cell.variant): 70.0 + cell.seed}

    monkeypatch.setattr(fashion, "run_cell", fake_cell)  # the trials run cells through fashion.run_and_cache
    monkeypatch.setattr(trials, "subset_directory", lambda path, *a: path)
    argv = ["budget", "--widths", "0.25", "--epochs", "3", "--seeds", "0", "1",
            "--cache", str(tmp_path / "t.jsonl"), "--work", str(tmp_path)]
    assert trials.main(argv) == 0
    assert ran == [("mobilenet/individual/0.25/seed0", 3), ("mobilenet/individual/0.25/seed1", 3)]
    keys = [json.loads(line)["key"] for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert keys == ["budget/3ep/mobilenet/individual/0.25/seed0", "budget/3ep/mobilenet/individual/0.25/seed1"]
    assert trials.main(argv) == 0 and len(ran) == 2  # cached: nothing runs again


@pytest.mark.parametrize("args, says", [(["--net", "vgg"], "unknown --net 'vgg'"), (["--widths", "1"], "(0, 1)"),
                                        (["--epochs", "0"], "at least 1"),
                                        (["--reorder", "taylor"], "unknown --reorder 'taylor'; known: none, l1")])
def test_budget_trial_bad_input_is_one_line(args: list[str], says: str, capsys: pytest.CaptureFixture[str]) -> None:
    import benchmarks.fashion_trials as trials

    assert trials.main(["budget", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and says in err and "\n" not in err


def test_retrofit_trial_runs_the_table_cell_at_its_reorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.fashion_trials as trials

    ran: list[tuple[Cell, int]] = []

    def fake_cell(s: fashion.Setting, data_dir: Path, cell: Cell, work: Path) -> dict:
        ran.append((cell, s.epochs))
        return {1.0: 80.0, 0.25: 70.0}

    monkeypatch.setattr(fashion, "run_cell", fake_cell)  # the trials run cells through fashion.run_and_cache
    monkeypatch.setattr(trials, "subset_directory", lambda path, *a: path)
    argv = ["retrofit", "--net", "resnet", "--reorder", "l2", "--epochs", "3", "--seeds", "1",
            "--cache", str(tmp_path / "t.jsonl"), "--work", str(tmp_path)]
    assert trials.main(argv) == 0
    assert ran == [(Cell("retrofit", "l2-3", "resnet", 1), fashion.SETTINGS["full"].epochs)]  # the table's setting
    assert json.loads((tmp_path / "t.jsonl").read_text())["key"] == "trial/resnet/retrofit/l2-3/seed1"


def test_anywidth_trial_trains_the_sandwich_cell_with_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trial's cell is row e's recipe with labels for the narrow widths, and it leaves row e's
    saved network (the one row f searches) alone."""
    import benchmarks.fashion_cells as cells
    import benchmarks.fashion_trials as trials

    trained: list[dict] = []
    monkeypatch.setattr(cells, "_train", lambda model, s, data_dir, net, seed, runs=None, **changes: trained.append(changes))
    monkeypatch.setattr(cells, "_calibrated", lambda model, *a, **k: model)
    monkeypatch.setattr(cells, "_test", lambda model, data_dir, net, widths=None: {w: 50.0 for w in widths})
    monkeypatch.setattr(trials, "subset_directory", lambda path, *a: path)
    argv = ["anywidth", "--net", "resnet", "--seeds", "0", "--cache", str(tmp_path / "t.jsonl"), "--work", str(tmp_path)]
    assert trials.main(argv) == 0
    assert trained == [{"narrow_loss": "labels", "width_range": [0.25, 1.0], "sandwich": 2}]
    entry = json.loads((tmp_path / "t.jsonl").read_text())
    assert entry["key"] == "trial/resnet/slimmable/sandwich-labels/seed0"
    assert {float(w) for w in entry["result"]} >= {0.3, 0.4, 0.6, 0.7, 0.9, 1.0}
    assert not list(tmp_path.glob("*sandwich.slim"))  # row e's network is not overwritten


def test_a_stopped_cell_resumes_its_training_exactly(tmp_path: Path) -> None:
    """A cell's training keeps a checkpoint in its run folder: a run stopped after some steps and run
    again (a fresh model, as the cell builds it) ends with the weights of a run never stopped."""
    import dataclasses

    import torch

    import benchmarks.fashion_cells as cells
    from benchmarks.fashion_data import subset_directory

    s = dataclasses.replace(fashion.SETTINGS["smoke"], epochs=2)
    data_dir = subset_directory(tmp_path / "data", s.train_images, s.test_images)
    cell = Cell("slimmable", "distill", "resnet", 0)

    def trained(runs: Path | None, stop_after: int | None = None) -> dict:
        torch.manual_seed(0)
        model = cells._convert(cells._plain("resnet"), "resnet")
        torch.manual_seed(0)
        cells._train(model, s, data_dir, "resnet", 0, runs, stop_after)
        return {k: v.clone() for k, v in model.state_dict().items()}

    never_stopped = trained(None)
    runs = cells.run_dir(s, cell, tmp_path)
    trained(runs, stop_after=3)  # 2 epochs of 3 steps: stopped in the second
    assert list(runs.glob("*/checkpoint.pt"))
    resumed = trained(runs)
    log = [json.loads(line) for path in runs.glob("*/log.jsonl") for line in path.read_text().splitlines()]
    assert [e.get("step") for e in log if e.get("event", e.get("kind")) == "resume"] == [3]  # it did resume
    assert all(torch.equal(never_stopped[k], resumed[k]) for k in never_stopped)
    cells.done_with(s, cell, tmp_path)
    assert not runs.exists()


def test_the_report_says_when_cell_times_count_a_resumed_part_only() -> None:
    from benchmarks.fashion_report import cell_time

    a, b = Cell("individual", "1", "resnet", 0), Cell("individual", "0.5", "resnet", 0)
    done = {a.key: {"seconds": 1800.0}, b.key: {"seconds": 1800.0, "resumed": True}}
    assert cell_time([a], done).startswith("0.5 h of cell time") and "resumed" not in cell_time([a], done)
    assert cell_time([a, b], done).startswith("1.0 h") and "1 cell(s) resumed from a checkpoint" in cell_time([a, b], done)
