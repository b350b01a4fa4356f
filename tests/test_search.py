"""Search (issue 14, item 4): greedy per-group slimming under FLOPs / parameter / latency budgets."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

import slimify
from slimify.cli.app import main
from slimify.deploy.extract import active_params, export
from slimify.errors import SlimifyError
from slimify.rewrite.config_slots import group_grid
from slimify.selection.config_search import Budget, parse_budget, search
from slimify.store.digits_net import DigitsNet
from slimify.train import digits
from slimify.train.loader import as_batches
from tests.zoo import macs

pytestmark = pytest.mark.usefixtures("one_thread")


def slim() -> torch.nn.Module:
    torch.manual_seed(0)
    return slimify.convert(DigitsNet(), (0.25, 0.5, 0.75, 1.0), 4, torch.randn(1, 3, 32, 32)).eval()


def held(n: int = 2, size: int = 64) -> list:
    return list(itertools.islice(as_batches(digits("val"), size), n))


@pytest.mark.parametrize("kind, text, want", [
    ("flops", "300M", Budget("flops", 3e8)), ("flops", "0.3x", Budget("flops", 0.3, True)),
    ("params", "2M", Budget("params", 2e6)), ("latency", "5", Budget("latency", 5.0)),
])
def test_budgets_parse(kind: str, text: str, want: Budget) -> None:
    assert parse_budget(kind, text) == want


@pytest.mark.parametrize("kind, text", [("flops", "1.5x"), ("flops", "abc"), ("flops", "-3M"), ("energy", "1")])
def test_bad_budgets(kind: str, text: str) -> None:
    with pytest.raises(SlimifyError):
        parse_budget(kind, text)


def test_flops_search_meets_the_budget_on_the_grid_and_names_the_result() -> None:
    model = slim()
    result = search(model, held(1, 32), parse_budget("flops", "0.4x"), steps=2)
    x = torch.randn(1, 3, 32, 32)
    full = macs(export(model, 1.0), x)
    assert result.name == "search-flops-0.40x" and result.name in slimify.configs(model)
    chosen = result.chosen
    assert chosen is not None and chosen.cost <= result.limit < result.path[-2].cost
    assert macs(export(model, result.name), x) == pytest.approx(chosen.flops / 2)  # the cost is the exported model's
    assert macs(export(model, result.name), x) <= 0.4 * full
    costs = [p.cost for p in result.path]
    assert costs == sorted(costs, reverse=True)
    groups = {g.index: g for g in slimify.report(model).groups}
    analysis = slimify.state.get_state(model).record.analysis
    for gi, channels in chosen.channels.items():
        assert channels in group_grid(analysis.table.groups[gi], 4) and channels <= groups[gi].size
    assert set(map(id, result.pareto)) <= set(map(id, result.path))
    assert len(result.uniform) == 16 and "search-flops-0.40x" in result.table()


def test_params_search_counts_what_export_keeps() -> None:
    model = slim()
    result = search(model, held(1, 32), parse_budget("params", "0.5x"), steps=3)
    assert active_params(model, result.name) == result.chosen.cost
    assert sum(p.numel() for p in export(model, result.name).parameters()) <= 0.5 * active_params(model, 1.0)


def test_latency_search_reports_the_measured_latency() -> None:
    model = slim()
    result = search(model, held(1, 32), parse_budget("latency", "0.9x"), steps=3, latency_runs=3)
    assert result.measured_ms is not None and result.measured_ms <= result.limit
    assert "measured on cpu" in result.table()


@pytest.mark.parametrize("budget, batches, message", [
    (Budget("params", 10.0), None, "no configuration meets the budget"),
    (Budget("flops", 0.5, True), [(torch.randn(4, 1, 32, 32), torch.zeros(4, dtype=torch.long))], "does not fit"),
    (Budget("flops", 0.5, True), [(torch.randn(4, 3, 32, 32), torch.full((4,), 12))], "label 12"),
    (Budget("flops", 0.5, True), [], "no batches"),
])
def test_bad_search_input_adds_nothing(budget: Budget, batches, message: str) -> None:
    model = slim()
    keys = list(model.state_dict())
    with pytest.raises(SlimifyError, match=message):
        search(model, held(1) if batches is None else batches, budget)
    assert list(slimify.configs(model)) == ["0.25", "0.5", "0.75", "1"] and list(model.state_dict()) == keys


def _run(args: list, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_search_command_writes_a_model_that_export_profile_and_pick_know(tmp_path: Path, capsys) -> None:
    src = slimify.save(slim(), tmp_path / "m.slim", source="slimify:digitsnet")
    out = tmp_path / "s.slim"
    code, text, _ = _run(["search", src, "--data", "digits", "--flops", "0.5x", "--batches", "1", "--batch-size",
                          "32", "--steps", "3", "-o", out], capsys)
    assert code == 0 and "search-flops-0.50x" in text and (tmp_path / "s-search.png").stat().st_size > 1000
    assert "search-flops-0.50x" in slimify.configs(slimify.load(out))
    code, text, _ = _run(["export", out, "--config", "search-flops-0.50x", "-o", tmp_path / "s.pt"], capsys)
    assert code == 0 and "configuration 'search-flops-0.50x'" in text
    code, text, _ = _run(["profile", out, "--runs", "1", "--warmup", "0"], capsys)
    assert code == 0 and "search-flops-0.50x" in text
    code, text, _ = _run(["pick", out, "--flops", "9M", "--runs", "1", "--warmup", "0"], capsys)
    assert code == 0 and "picked" in text


@pytest.mark.parametrize("args, message", [
    (["--flops", "0.5x", "--params", "1M"], "exactly one budget"),
    (["--flops", "2x"], "relative budget"),
    (["--params", "10"], "no configuration meets the budget"),
])
def test_search_command_bad_input_writes_nothing(tmp_path: Path, capsys, args: list, message: str) -> None:
    src = slimify.save(slim(), tmp_path / "m.slim", source="slimify:digitsnet")
    code, _, err = _run(["search", src, "--data", "digits", "--batches", "1", "--batch-size", "32", *args,
                         "-o", tmp_path / "s.slim"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.slim"]


def test_fraction_takes_at_least_that_share_of_a_group_per_move() -> None:
    from slimify.selection.search_moves import candidate_counts as _moves

    group = type("G", (), {"fixed": False, "unit": 1, "size": 64, "index": 0})()
    assert _moves([group], 4, {0: 64}, 1) == {0: 60}
    assert _moves([group], 4, {0: 64}, 1, fraction=0.2) == {0: 48}
    assert _moves([group], 4, {0: 8}, 3) == {0: 4}
