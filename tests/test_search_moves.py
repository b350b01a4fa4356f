"""Making search practical (issue 14, item 4): coarse moves far from the budget, fine ones near it,
free moves ranked by their saving, candidates scored on small images while costs are counted at
the deployed size (``cost_input`` / ``--eval-size`` / ``--cost-size``)."""
from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import slimify
from slimify.deploy.extract import export
from slimify.selection.config_search import parse_budget, search
from slimify.selection.search_moves import ranking, widened
from slimify.store.digits_net import DigitsNet
from slimify.train import digits
from slimify.train.loader import as_batches
from tests.test_search import _run
from tests.zoo import macs

pytestmark = pytest.mark.usefixtures("one_thread")


def slim() -> torch.nn.Module:
    torch.manual_seed(0)
    return slimify.convert(DigitsNet(), (0.25, 0.5, 0.75, 1.0), 4, torch.randn(1, 3, 32, 32)).eval()


def held(size: int = 32) -> list:
    return list(itertools.islice(as_batches(digits("val", size=size), 32), 1))


def point(cost: float, top1: float, loss: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(cost=cost, flops=cost, top1=top1, loss=loss)


def test_a_free_move_saving_more_beats_one_saving_less_even_when_that_one_gains() -> None:
    current = point(100.0, 50.0)
    tiny_gain, big_free, lossy = point(99.0, 52.0, 0.9), point(60.0, 50.0, 0.95), point(50.0, 40.0)
    best = min([tiny_gain, big_free, lossy], key=lambda p: ranking(current, p))
    assert best is big_free
    assert ranking(current, point(80.0, 49.0)) < ranking(current, point(90.0, 49.0))  # same loss, more saved


@pytest.mark.parametrize("saved, want", [(10.0, 60), (2.0, 44), (0.5, 4), (0.0, 60)])
def test_widened_takes_channels_in_proportion_to_the_saving_asked(saved: float, want: int) -> None:
    grid = list(range(4, 68, 4))  # 4 … 64
    assert widened(grid, 64, 60, saved, min_saving=10.0) == want  # 4 channels save `saved`


def test_coarse_moves_then_fine_ones_land_just_under_the_budget() -> None:
    model = slim()
    coarse = search(model, held(), parse_budget("flops", "0.6x"), fraction=0.3)
    fine = search(slim(), held(), parse_budget("flops", "0.6x"), fraction=0.0)
    assert len(coarse.path) < len(fine.path)
    assert coarse.chosen.cost <= coarse.limit < coarse.path[-2].cost
    # the last move is a fine one: one grid step of one group
    before, after = coarse.path[-2].channels, coarse.chosen.channels
    changed = [g for g in after if after[g] != before[g]]
    assert len(changed) == 1 and before[changed[0]] - after[changed[0]] == 4


def test_costs_are_counted_on_the_cost_input_while_batches_are_smaller() -> None:
    model = slim()
    big = torch.randn(1, 3, 64, 64)
    result = search(model, held(size=24), parse_budget("flops", "0.5x"), cost_input=big)
    assert result.full.flops == 2 * macs(export(model, 1.0), big)
    assert result.chosen.flops == 2 * macs(export(model, result.name), big)
    assert 2 * macs(export(model, result.name), big) <= 0.5 * result.full.flops


def test_search_command_scores_small_images_and_counts_costs_at_another_size(tmp_path: Path, capsys) -> None:
    src = slimify.save(slim(), tmp_path / "m.slim", source="slimify:digitsnet")
    code, text, err = _run(["search", src, "--data", "digits", "--flops", "0.5x", "--batches", "1", "--batch-size",
                            "32", "--eval-size", "24", "--cost-size", "64", "-o", tmp_path / "s.slim"], capsys)
    assert code == 0, err
    model = slimify.load(tmp_path / "s.slim")
    x = torch.randn(1, 3, 64, 64)
    assert macs(export(model, "search-flops-0.50x"), x) <= 0.5 * macs(export(model, 1.0), x)


def _folder(root: Path, classes: int) -> Path:
    for c in range(classes):
        (root / "val" / f"c{c:02d}").mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "val" / f"c{c:02d}" / "0.png")
    return root


def test_search_command_data_that_does_not_fit_writes_nothing(tmp_path: Path, capsys) -> None:
    src = slimify.save(slim(), tmp_path / "m.slim", source="slimify:digitsnet")
    data = _folder(tmp_path / "data", 12)
    code, _, err = _run(["search", src, "--data", data, "--flops", "0.5x", "-o", tmp_path / "s.slim"], capsys)
    assert code == 2 and "search data has label 11 but the model has 10 outputs" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "m.slim"]


def test_a_budget_the_walk_cannot_meet_is_one_error_when_the_floor_is_unknown(monkeypatch) -> None:
    from slimify.errors import SlimifyError
    from slimify.selection.search_result import Budget
    from slimify.selection.search_walk import Walk

    monkeypatch.setattr(Walk, "_floor", lambda self: None)  # as for a chunk's pieces that cannot all be smallest
    model = slim()
    with pytest.raises(SlimifyError, match="no configuration meets the budget 10: the search slimmed every group"):
        search(model, held(), Budget("flops", 10.0), fraction=0.5)
    assert list(slimify.configs(model)) == ["0.25", "0.5", "0.75", "1"]
