"""The one place that runs the pipeline in order: trace → analyze → groups → plan → rewrite."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from slimify.analyze import analyze
from slimify.errors import SlimifyError
from slimify.gcpause import gc_paused
from slimify.groups import GroupTable, cut_around, find_groups
from slimify.nn.batchnorm import attach_private_batchnorm
from slimify.nn.output_pad import OutputPad
from slimify.nn.serve import SlimData, empty_cache, make_slimmable
from slimify.plan import EmptyPiece, NotABox, Plan, Unbalanced, check_switches, make_plan
from slimify.summary import ConversionReport, build_report
from slimify.rules import find_module_rule
from slimify.rules.caches import cache_attrs, caches_emptied
from slimify.selfcheck import self_check, unexpected, with_line
from slimify.space import ChannelSpace
from slimify.state import STATE_ATTR, SlimState, get_state, is_slimmable
from slimify.trace import trace

__all__ = ["convert", "report", "analyze_model", "Analysis", "default_input"]


@dataclass
class Analysis:
    """Result of the read-only stages, enough to rewrite (or just inspect) a model."""

    space: ChannelSpace
    table: GroupTable
    plan: Plan
    report: ConversionReport


def default_input(model: nn.Module) -> torch.Tensor:
    """A random batch of one at the model's own input size (timm's pretrained_cfg), else 224²."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    return torch.randn(1, *size)


@gc_paused
def analyze_model(model: nn.Module, switches: Any = (0.25, 0.5, 0.75, 1.0), divisor: int | None = None,
                  example_input: torch.Tensor | None = None) -> Analysis:
    """Trace, find channel groups and plan widths without touching ``model``; every switch of the
    plan is run once on a copy (``selfcheck.py``) before it is returned."""
    switches, divisor = check_switches(switches, divisor)
    if not isinstance(model, nn.Module):
        raise SlimifyError(f"convert needs a torch.nn.Module, got {type(model).__name__}")
    start = time.perf_counter()
    example = default_input(model) if example_input is None else example_input
    has_rule = lambda m: find_module_rule(m) is not None  # noqa: E731
    with caches_emptied(model):  # the trace sees how a cached tensor is computed, not a constant
        traced = trace(model, example, has_rule=has_rule)
        space = analyze(traced)
    splits_by_count = bool(space.balances)  # planning removes the balances it ties: ask before
    table, plan = _plan(space, switches, divisor, type(model).__name__)
    stuck = _stuck_channels(table, plan)
    if stuck and splits_by_count:  # units of tied chunks may have outgrown their groups
        other = analyze(traced, positional_chunks=True)
        other_table, other_plan = _plan(other, switches, divisor, type(model).__name__)
        if _stuck_channels(other_table, other_plan) < stuck:
            space, table, plan = other, other_table, other_plan
    output = next((n for n in reversed(traced.graph.nodes) if n.op == "output"), None)
    table, plan = self_check(model, example, space, table, plan,
                             lambda trial: _plan(trial, switches, divisor, type(model).__name__), output)
    seconds = time.perf_counter() - start
    return Analysis(space, table, plan, build_report(type(model).__name__, table, plan, seconds))


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
               if not g.fixed and g.size > plan.group_divisors.get(g.index, plan.divisor) and plan.kept[g.index][0] == len(g.classes))


@gc_paused
def convert(model: nn.Module, switches: Any = (0.25, 0.5, 0.75, 1.0), divisor: int | None = None,
            example_input: torch.Tensor | None = None, reorder: str | None = None,
            reorder_data: Any = None) -> nn.Module:
    """Make ``model`` slimmable in place and return it.

    Every switch runs the first channels of each channel group with private BatchNorm; at
    width 1.0 the model computes exactly what it computed before, and every switch has run once
    before it returns (``selfcheck.py``). ``divisor``: every width a multiple of it; ``None``
    (default) uses 8, or a smaller power of two for a group too narrow for 8. ``reorder`` ("l1",
    "l2", "bn", "taylor" with ``reorder_data`` batches) first moves each group's most important
    channels first, for pretrained weights (see ``slimify.reorder``).
    """
    if is_slimmable(model):
        raise SlimifyError(f"{type(model).__name__} is already slimmable (switches {list(get_state(model).switches)})")
    try:
        analysis = analyze_model(model, switches, divisor, example_input)
    except SlimifyError as e:
        raise with_line(e) from e.__cause__
    except Exception as e:  # noqa: BLE001 - never a raw traceback: one error naming the line
        raise unexpected(model, e) from e
    ordering = None
    if reorder is not None:  # permutes channels within groups: the plan stays valid
        from slimify.reorder import reorder as reorder_channels
        ordering = reorder_channels(model, reorder, reorder_data, analysis, example_input=example_input)
    state = SlimState(analysis.plan.switches)
    try:  # the self-check already rewrote a copy of the model with this plan
        rewrite(model, analysis.plan, state)
    except Exception as e:  # noqa: BLE001
        raise unexpected(model, e) from e
    example_shape = list((default_input(model) if example_input is None else example_input).shape)
    state.info.update(report=analysis.report, divisor=None if analysis.plan.auto_divisor else analysis.plan.divisor,
                      reorder=ordering, example_shape=example_shape)
    state.info["analysis"] = analysis
    setattr(model, STATE_ATTR, state)
    return model


def rewrite(model: nn.Module, plan: Plan, state: SlimState) -> None:
    """Apply ``plan``: serve narrow parameters and attributes, add private BatchNorms."""
    data: dict[str, SlimData] = {}
    modules = dict(model.named_modules(remove_duplicate=False))  # one walk, not one per lookup

    def for_module(path: str) -> SlimData:
        found = data.get(path)
        return found if found is not None else data.setdefault(path, SlimData(state))

    for (path, name), per_switch in plan.params.items():
        if any(per_switch):
            for_module(path).params[name] = per_switch
    for (path, name), values in plan.attrs.items():
        module = modules[path]
        if any(_differs(v, getattr(module, name, None)) for v in values):
            for_module(path).attrs[name] = values
    for path, per_switch in plan.batchnorms.items():
        for_module(path).bn_slots = attach_private_batchnorm(modules[path], per_switch, plan.switches)
    seen: set[int] = set()
    for path, module in modules.items():  # a cached tensor has the width that computed it
        if id(module) in seen:
            continue
        seen.add(id(module))
        for name in cache_attrs(module):
            for_module(path).forward_caches[name] = (state.index, empty_cache(getattr(module, name)))
    for path, module_data in data.items():
        make_slimmable(modules[path], module_data)
    if plan.output_widths is not None:  # a feature output keeps its size: pad narrow switches
        model.register_forward_hook(OutputPad(state, plan.output_widths, plan.output_widths[-1]))


def _differs(value: Any, current: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(current, (list, tuple)):
        return list(value) != list(current)
    return value != current


def report(model: nn.Module) -> ConversionReport:
    """The groups of a converted model, their widths per switch and the fixed ones' reasons."""
    return get_state(model).info["report"]
