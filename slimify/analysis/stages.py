"""The read-only stages run in order on a model: trace → analyze → groups → plan (→ the
self-check the caller passes in). The model is never changed; ``slimify.pipeline`` then reorders
and rewrites it."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
import torch.nn as nn

from slimify.analysis.design_floor import design_floor
from slimify.analysis.example_inputs import ExampleCall, default_input
from slimify.analysis.full_width import full_width_reasons
from slimify.analysis.groups import GroupTable, cut_around, find_groups
from slimify.analysis.plan import EmptyPiece, NotABox, Plan, Unbalanced, make_plan
from slimify.analysis.report import ConversionReport, build_report
from slimify.analysis.space import ChannelSpace
from slimify.analysis.switch_checks import check_minimum, check_switches
from slimify.analysis.trace import trace
from slimify.analysis.walk import analyze
from slimify.errors import SlimifyError
from slimify.gcpause import gc_paused
from slimify.rules import find_module_rule
from slimify.rules.caches import caches_emptied

__all__ = ["analyze_model", "Analysis", "Check"]

Replan = Callable[[ChannelSpace], tuple[GroupTable, Plan]]
# (model, example inputs, space, table, plan, replan, traced output node) -> the table and plan that ran:
# the self-check (``slimify.check.selfcheck.self_check``). It rewrites a copy of the model, a later
# stage than analysis, so the callers above (``convert``, ``reorder``) hand it in.
Check = Callable[[nn.Module, ExampleCall, ChannelSpace, GroupTable, Plan, Replan, "fx.Node | None"], tuple[GroupTable, Plan]]


@dataclass
class Analysis:
    """Result of the read-only stages, enough to rewrite (or just inspect) a model."""

    space: ChannelSpace
    table: GroupTable
    plan: Plan
    report: ConversionReport
    # uniform width → classes kept per group (``plan.counts_for`` fills it): a width is looked up on
    # every ``slimify.width``, and balancing chunk pieces costs ~30 ms a lookup on EdgeNeXt
    width_counts: dict[float, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)


@gc_paused
def analyze_model(model: nn.Module, switches: Any = (0.25, 0.5, 0.75, 1.0), divisor: int | None = None,
                  example_input: Any = None, example_kwargs: dict[str, Any] | None = None,
                  check: Check | None = None) -> Analysis:
    """Trace, find channel groups and plan widths without touching ``model``. ``example_input``:
    one input, or a tuple of positional inputs; ``example_kwargs``: keyword inputs. ``check`` (the
    self-check, ``slimify/check/selfcheck.py``; ``convert`` and ``reorder`` pass it) runs every
    switch of the plan once on a copy, called with those inputs, and fixes what fails before the
    plan is returned."""
    switches, divisor = check_switches(switches, divisor)
    if not isinstance(model, nn.Module):
        raise SlimifyError(f"convert needs a torch.nn.Module, got {type(model).__name__}")
    start = time.perf_counter()
    example = default_input(model) if example_input is None else example_input
    has_rule = lambda m: find_module_rule(m) is not None  # noqa: E731
    with caches_emptied(model):  # the trace sees how a cached tensor is computed, not a constant
        traced = trace(model, example, has_rule=has_rule, example_kwargs=example_kwargs)
        space = analyze(traced)
    splits_by_count = bool(space.balances)  # planning removes the balances it ties: ask before
    table, plan = _plan(space, switches, divisor, type(model).__name__)
    check_minimum(table, switches, type(model).__name__)
    stuck = _stuck_channels(table, plan)
    # units of tied chunks may have outgrown their groups: chunk by position, then equal counts by a
    # common multiple instead of ties (``analysis/common_counts.py``), whichever leaves fewer stuck
    for positional, common in ((True, False), (False, True), (True, True)):
        if not (stuck and splits_by_count):
            break
        other = analyze(traced, positional_chunks=positional)
        other.common_counts = common
        other_table, other_plan = _plan(other, switches, divisor, type(model).__name__)
        other_stuck = _stuck_channels(other_table, other_plan)
        if other_stuck < stuck:
            space, table, plan, stuck = other, other_table, other_plan, other_stuck
    if check is not None:
        output = next((n for n in reversed(traced.graph.nodes) if n.op == "output"), None)
        table, plan = check(model, ExampleCall.of(example, example_kwargs), space, table, plan,
                            lambda trial: _plan(trial, switches, divisor, type(model).__name__), output)
    seconds = time.perf_counter() - start
    report = build_report(type(model).__name__, table, plan, seconds, full_width_reasons(space, table, plan))
    floor = design_floor(traced.graph_module, space, table)
    report.design_floor = None if floor is None else floor.line()
    return Analysis(space, table, plan, report)


def _plan(space: ChannelSpace, switches: tuple[float, ...], divisor: int | None, name: str) -> tuple[GroupTable, Plan]:
    """Groups and widths; each failed check adds a constraint to ``space`` and plans again."""
    emptied: set[bytes] = set()
    for _ in range(64):
        table = find_groups(space)
        try:
            return table, make_plan(space, table, switches, divisor)
        except Unbalanced as e:  # tie equal pieces position by position
            for piece in e.pieces[1:]:
                space.union(e.pieces[0], piece)
            space.balances = [b for b in space.balances if b is not e.pieces]
        except NotABox as e:
            space.fix(e.ids, e.reason)
        except EmptyPiece as e:  # a piece read as a size kept no channel: its own group, once
            if e.ids.tobytes() in emptied:
                space.fix(e.ids, f"{e.origin} would count no channels at a narrow switch")
            emptied.add(e.ids.tobytes())
            cut_around(space, table, e.ids)
    raise SlimifyError(f"could not plan widths for {name}")


def _stuck_channels(table: GroupTable, plan: Plan) -> int:
    """Channels of slimmable groups that keep their full width even at the narrowest switch:
    a group whose unit (tied by equal-width pieces) is as large as the group itself."""
    return sum(g.size for g in table.groups
               if not g.fixed and g.size > plan.group_divisors.get(g.index, plan.divisor)
               and plan.kept[g.index][0] == len(g.classes))
