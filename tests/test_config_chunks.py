"""Uniform widths of a model whose ``chunk`` pieces sit in groups of different units (timm
EdgeNeXt's SplitTransposeBlock): rounding each group alone would give the equal pieces different
widths at most widths between the switches; those groups take the nearest balanced counts above."""
from __future__ import annotations

import warnings

import pytest
import torch

import slimify
from slimify.rewrite.config_slots import config_counts

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def edgenext() -> torch.nn.Module:
    from timm import create_model

    torch.manual_seed(0)
    model = create_model("edgenext_xx_small", num_classes=10).eval()
    return slimify.convert(model, (0.25, 0.5, 0.75, 1.0), 1, torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("w", [0.29, 0.883316])
def test_uniform_widths_of_a_chunked_model_serve_and_export(edgenext, w: float) -> None:
    name = slimify.add_config(edgenext, f"w{w}", w)  # runs it and checks its export against it
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        with slimify.width(edgenext, name):
            y = edgenext(x)
        torch.testing.assert_close(slimify.export(edgenext, w).eval()(x), y, rtol=1e-4, atol=1e-4)
    assert y.shape == (2, 10)


def test_balanced_groups_only_move_up_and_the_rest_keep_their_rounding(edgenext) -> None:
    from slimify.analysis.plan import kept_classes
    from slimify.state import get_state

    plan = get_state(edgenext).record.analysis.plan
    table = get_state(edgenext).record.analysis.table
    rounded = kept_classes(table, 0.29, plan.group_divisors)
    counts = config_counts(edgenext, 0.29)[0]
    moved = [g for g, (a, b) in enumerate(zip(rounded, counts)) if a != b]
    assert moved and all(counts[g] > rounded[g] for g in moved)  # a real rebalancing, upwards only
    assert len(moved) < len([g for g in table.groups if not g.fixed])


def test_rebalancing_falls_back_to_the_plans_own_counts_of_the_wider_switch(edgenext) -> None:
    """When no width between ``w`` and the next switch balances the pieces, the switch's counts as
    the plan balanced them (here by common counts), not a fresh rounding of its width."""
    from slimify.analysis import plan as plan_module
    from slimify.analysis.plan import kept_classes
    from slimify.state import get_state

    analysis = get_state(edgenext).record.analysis
    divisors = analysis.plan.group_divisors or analysis.plan.divisor
    rounded = kept_classes(analysis.table, 0.5, divisors)
    assert plan_module._unbalanced_groups(analysis, rounded)  # rounding 0.5 alone breaks a chunk
    counts = plan_module._balanced_above(analysis, 0.5, rounded)
    assert not plan_module._unbalanced_groups(analysis, counts)
    assert counts == [analysis.plan.kept[g.index][1] for g in analysis.table.groups]  # switch 0.5 as planned


def test_a_widths_counts_are_worked_out_once(edgenext, monkeypatch) -> None:
    """Balancing a chunked model's width costs tens of ms; ``slimify.width`` looks it up on every
    entry, so the second lookup reads what the first worked out (the same counts, no re-balancing)."""
    from slimify.analysis import plan as plan_module
    from slimify.state import get_state

    analysis = get_state(edgenext).record.analysis
    first = plan_module.counts_for(analysis, 0.37)
    assert analysis.width_counts[0.37] == first
    monkeypatch.setattr(plan_module, "_balanced_above", lambda *a: pytest.fail("balanced again"))
    monkeypatch.setattr(plan_module, "uniform_counts", lambda *a: pytest.fail("rounded again"))
    assert plan_module.counts_for(analysis, 0.37) == first
