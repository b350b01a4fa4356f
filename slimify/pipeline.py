"""The one place that runs the pipeline in order: analysis (trace → analyze → groups → plan) →
self-check (every switch runs once on a copy) → ordering (optional) → rewrite."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from slimify.analysis.example_inputs import default_input, describe_call, first_shape
from slimify.analysis.report import ConversionReport
from slimify.analysis.stages import analyze_model
from slimify.check.selfcheck import self_check, unexpected, with_line
from slimify.errors import SlimifyError
from slimify.gcpause import gc_paused
from slimify.ordering.permute import Reordering
from slimify.ordering.permute import reorder as reorder_channels
from slimify.rewrite.apply import rewrite
from slimify.state import STATE_ATTR, ConversionRecord, SlimState, get_state, is_slimmable

__all__ = ["convert", "report", "reordering"]


@gc_paused
def convert(model: nn.Module, switches: Any = (0.25, 0.5, 0.75, 1.0), divisor: int | None = None,
            example_input: Any = None, reorder: str | None = None,
            reorder_data: Any = None, example_kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Make ``model`` slimmable in place and return it.

    Every switch runs the first channels of each channel group with private BatchNorm; at
    width 1.0 the model computes exactly what it computed before, and every switch has run once
    before it returns (``check/selfcheck.py``). ``divisor``: every width a multiple of it; ``None``
    (default) uses 8, or a smaller power of two for a group too narrow for 8. ``reorder`` ("l1",
    "l2", "bn", "taylor" with ``reorder_data`` batches) first moves each group's most important
    channels first, for pretrained weights (see ``slimify.reorder``). ``example_input`` is one input
    or a tuple of positional inputs (``(a, b)`` for ``model(a, b)``), ``example_kwargs`` keyword
    inputs (``{"timestep": t}``); the self-check calls the model with both, and both are recorded
    for ``save``/``load``.
    """
    if is_slimmable(model):
        raise SlimifyError(f"{type(model).__name__} is already slimmable (switches {list(get_state(model).switches)})")
    if example_kwargs is not None and not isinstance(example_kwargs, dict):
        raise SlimifyError(f"example_kwargs must be a dict of keyword inputs, got {type(example_kwargs).__name__}")
    try:
        analysis = analyze_model(model, switches, divisor, example_input, example_kwargs, check=self_check)
    except SlimifyError as e:
        raise with_line(e) from e.__cause__
    except Exception as e:  # noqa: BLE001 - never a raw traceback: one error naming the line
        raise unexpected(model, e) from e
    ordering = None
    if reorder is not None:  # permutes channels within groups: the plan stays valid
        ordering = reorder_channels(model, reorder, reorder_data, analysis, example_input=example_input)
    example = (default_input(model) if example_input is None else example_input,)
    args = example[0] if isinstance(example[0], tuple) else example
    several = len(args) != 1 or not isinstance(args[0], torch.Tensor) or bool(example_kwargs)
    recorded = describe_call(args, example_kwargs) if several else None  # kept by save/load
    state = SlimState(analysis.plan.switches)
    try:  # the self-check already rewrote a copy of the model with this plan
        rewrite(model, analysis.plan, state)
    except Exception as e:  # noqa: BLE001
        raise unexpected(model, e) from e
    divisor = None if analysis.plan.auto_divisor else analysis.plan.divisor  # None: automatic, per group
    state.record = ConversionRecord(report=analysis.report, analysis=analysis, divisor=divisor,
                                    reorder=ordering, example_shape=first_shape(args, example_kwargs),
                                    example_inputs=recorded)
    setattr(model, STATE_ATTR, state)
    return model


def report(model: nn.Module) -> ConversionReport:
    """The groups of a converted model, their widths per switch and the fixed ones' reasons."""
    return get_state(model).record.report


def reordering(model: nn.Module) -> Reordering | None:
    """What ``convert(..., reorder=METHOD)`` did to the channels (orders, groups moved, the largest
    output change); None when it reordered nothing."""
    return get_state(model).record.reorder
