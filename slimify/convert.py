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
from slimify.example_inputs import describe, first_shape
from slimify.gcpause import gc_paused
from slimify.groups import GroupTable, find_groups
from slimify.nn.batchnorm import attach_private_batchnorm
from slimify.nn.output_pad import OutputPad
from slimify.nn.serve import SlimData, empty_cache, make_slimmable
from slimify.plan import NotABox, Plan, Unbalanced, check_switches, make_plan
from slimify.summary import ConversionReport, build_report
from slimify.rules import find_module_rule
from slimify.rules.caches import cache_attrs, caches_emptied
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
def analyze_model(model: nn.Module, switches: Any = (0.25, 0.5, 0.75, 1.0), divisor: int = 8,
                  example_input: Any = None, example_kwargs: dict[str, Any] | None = None) -> Analysis:
    """Trace, find channel groups and plan widths without touching ``model``. ``example_input``:
    one input, or a tuple of positional inputs; ``example_kwargs``: keyword inputs."""
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
    stuck = _stuck_channels(table, plan)
    if stuck and splits_by_count:  # units of tied chunks may have outgrown their groups
        other = analyze(traced, positional_chunks=True)
        other_table, other_plan = _plan(other, switches, divisor, type(model).__name__)
        if _stuck_channels(other_table, other_plan) < stuck:
            space, table, plan = other, other_table, other_plan
    seconds = time.perf_counter() - start
    return Analysis(space, table, plan, build_report(type(model).__name__, table, plan, seconds))


def _plan(space: ChannelSpace, switches: tuple[float, ...], divisor: int, name: str) -> tuple[GroupTable, Plan]:
    """Groups and widths; each failed check adds a constraint to ``space`` and plans again."""
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
    raise SlimifyError(f"could not plan widths for {name}")


def _stuck_channels(table: GroupTable, plan: Plan) -> int:
    """Channels of slimmable groups that keep their full width even at the narrowest switch:
    a group whose unit (tied by equal-width pieces) is as large as the group itself."""
    return sum(g.size for g in table.groups
               if not g.fixed and g.size > plan.divisor and plan.kept[g.index][0] == len(g.classes))


@gc_paused
def convert(model: nn.Module, switches: Any = (0.25, 0.5, 0.75, 1.0), divisor: int = 8,
            example_input: Any = None, reorder: str | None = None,
            reorder_data: Any = None, example_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Make ``model`` slimmable in place and return it.

    Every switch runs the first channels of each channel group with private BatchNorm; at
    width 1.0 the model computes exactly what it computed before. ``reorder`` ("l1", "l2", "bn",
    "taylor" with ``reorder_data`` batches) first moves each group's most important channels
    first, for pretrained weights (see ``slimify.reorder``). ``example_input`` is one input or a
    tuple of positional inputs (``(a, b)`` for ``model(a, b)``), ``example_kwargs`` keyword inputs
    (``{"timestep": t}``); both are recorded for ``save``/``load``.
    """
    if is_slimmable(model):
        raise SlimifyError(f"{type(model).__name__} is already slimmable (switches {list(get_state(model).switches)})")
    if example_kwargs is not None and not isinstance(example_kwargs, dict):
        raise SlimifyError(f"example_kwargs must be a dict of keyword inputs, got {type(example_kwargs).__name__}")
    analysis = analyze_model(model, switches, divisor, example_input, example_kwargs)
    ordering = None
    if reorder is not None:  # permutes channels within groups: the plan stays valid
        from slimify.reorder import reorder as reorder_channels
        ordering = reorder_channels(model, reorder, reorder_data, analysis, example_input=example_input)
    example = (default_input(model) if example_input is None else example_input,)
    args = example[0] if isinstance(example[0], tuple) else example
    several = len(args) != 1 or not isinstance(args[0], torch.Tensor) or bool(example_kwargs)
    recorded = describe(args, example_kwargs) if several else None  # kept by save/load
    state = SlimState(analysis.plan.switches)
    rewrite(model, analysis.plan, state)
    state.info.update(report=analysis.report, divisor=analysis.plan.divisor, reorder=ordering,
                      example_shape=first_shape(args, example_kwargs))
    if recorded is not None:
        state.info["example_inputs"] = recorded
    state.info["analysis"] = analysis
    setattr(model, STATE_ATTR, state)
    return model


def rewrite(model: nn.Module, plan: Plan, state: SlimState) -> None:
    """Apply ``plan``: serve narrow parameters and attributes, add private BatchNorms."""
    data: dict[str, SlimData] = {}

    def for_module(path: str) -> SlimData:
        return data.setdefault(path, SlimData(state))

    for (path, name), per_switch in plan.params.items():
        if any(per_switch):
            for_module(path).params[name] = per_switch
    for (path, name), values in plan.attrs.items():
        module = model.get_submodule(path)
        if any(_differs(v, getattr(module, name, None)) for v in values):
            for_module(path).attrs[name] = values
    for path, per_switch in plan.batchnorms.items():
        module = model.get_submodule(path)
        for_module(path).bn_slots = attach_private_batchnorm(module, per_switch, plan.switches)
    for path, module in model.named_modules():  # a cached tensor has the width that computed it
        for name in cache_attrs(module):
            for_module(path).forward_caches[name] = (state.index, empty_cache(getattr(module, name)))
    for path, module_data in data.items():
        make_slimmable(model.get_submodule(path), module_data)
    if plan.output_widths is not None:  # a feature output keeps its size: pad narrow switches
        model.register_forward_hook(OutputPad(state, plan.output_widths, plan.output_widths[-1]))


def _differs(value: Any, current: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(current, (list, tuple)):
        return list(value) != list(current)
    return value != current


def report(model: nn.Module) -> ConversionReport:
    """The groups of a converted model, their widths per switch and the fixed ones' reasons."""
    return get_state(model).info["report"]
