"""The one width setting a converted model shares with all of its slimmable parts.

Every slimmable module holds a reference to the same :class:`SlimState`; switching width is one
assignment, never a walk over the modules.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch.nn as nn

from slimify.errors import SlimifyError

if TYPE_CHECKING:
    from slimify.analysis.report import ConversionReport
    from slimify.analysis.stages import Analysis
    from slimify.ordering.permute import Reordering

__all__ = ["SlimState", "ConversionRecord", "get_state", "is_slimmable", "switches", "set_width", "width", "get_width"]

STATE_ATTR = "_slimify_state"


@dataclass
class ConversionRecord:
    """What a conversion found and chose, kept on the converted model: the report and analysis
    (``slimify.report``, ``save``), the divisor (``None``: automatic, per group), the channel reordering and the example input's
    shape (what ``save`` records so ``load`` rebuilds the same plan); ``example_inputs``: the form of
    several or keyword example inputs (``analysis/example_inputs.describe``; ``None`` for one tensor),
    which ``save`` records and ``load`` rebuilds; and the accuracy per width of the last evaluation
    (finetune's, kept in the ``.slim`` for ``profile``'s plot); the preprocessing the model was trained with."""

    report: ConversionReport | None = None
    analysis: Analysis | None = None
    divisor: int | None = 8
    reorder: Reordering | None = None
    example_shape: list[int] | None = None
    evaluation: dict[str, Any] | None = None  # see slimify.deploy.accuracy
    data_config: dict[str, Any] | None = None  # crop_pct, mean, std, interpolation: see slimify.train.data_config
    example_inputs: dict[str, Any] | None = None
    configs: dict[str, Any] = field(default_factory=dict)  # name → uniform width or {group: channels}
    # the weights were never trained: converted from a model name with neither a checkpoint nor published
    # weights (set by the CLI, kept in the .slim, cleared by finetune); narrow_loss "distill" needs trained ones
    random_init: bool = False
    config_slots: dict[tuple[int, ...], int] = field(default_factory=dict)  # classes kept per group → slot


@dataclass
class SlimState:
    """Switches of a converted model and the index of the active one."""

    switches: tuple[float, ...]
    index: int = -1  # index into ``switches``, or beyond them into ``slots``; -1 is the widest
    record: ConversionRecord = field(default_factory=ConversionRecord, repr=False)
    # width configurations served after the switches (``rewrite/config_slots.py``), each with a ``width``
    slots: list[Any] = field(default_factory=list, repr=False)
    # (model, w) → the slot serving a width that is no switch; set by the rewrite, which knows how
    # to build slots (the state, below every stage, cannot import it)
    serve_config: Callable[[nn.Module, Any], int] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.index = len(self.switches) - 1

    @property
    def width(self) -> float:
        if self.index >= len(self.switches):
            return self.slots[self.index - len(self.switches)].width
        return self.switches[self.index]

    @property
    def is_full(self) -> bool:
        return self.index == len(self.switches) - 1 and self.switches[-1] == 1.0

    def select(self, w: float) -> None:
        self.select_index(self.index_of(w))

    def select_index(self, idx: int) -> None:
        self.index = idx

    def index_of(self, w: float) -> int:
        for i, s in enumerate(self.switches):
            if abs(s - float(w)) < 1e-9:
                return i
        raise SlimifyError(f"width {w} is not one of this model's switches {list(self.switches)}")


def get_state(model: nn.Module) -> SlimState:
    state = getattr(model, STATE_ATTR, None)
    if not isinstance(state, SlimState):
        raise SlimifyError(f"{type(model).__name__} is not a slimmable model: run slimify.convert(model) first")
    return state


def is_slimmable(model: nn.Module) -> bool:
    return isinstance(getattr(model, STATE_ATTR, None), SlimState)


def switches(model: nn.Module) -> tuple[float, ...]:
    """The widths a converted model can run at, narrowest first."""
    return get_state(model).switches


def get_width(model: nn.Module) -> float:
    return get_state(model).width


def slot_of(model: nn.Module, w: Any) -> int:
    """The slot serving ``w``: a switch's index, else a width configuration's (``state.serve_config``,
    from ``rewrite/config_slots.py``, computes its cuts once and caches them)."""
    state = get_state(model)
    if isinstance(w, (int, float)) and not isinstance(w, bool):
        for i, s in enumerate(state.switches):
            if abs(s - float(w)) < 1e-9:
                return i
    if state.serve_config is None:
        raise SlimifyError(f"width {w!r} is not one of this model's switches {list(state.switches)}")
    return state.serve_config(model, w)


def set_width(model: nn.Module, w: Any) -> None:
    """Make every slimmable part of ``model`` run at ``w``: a switch, any uniform width between the
    narrowest switch and 1, a per-group configuration or a configuration's name."""
    get_state(model).select_index(slot_of(model, w))


@contextlib.contextmanager
def width(model: nn.Module, w: Any) -> Iterator[nn.Module]:
    """``with slimify.width(model, 0.5): model(x)`` runs at width 0.5 and restores the old width
    (``w`` as in :func:`set_width`)."""
    state = get_state(model)
    previous = state.index
    state.select_index(slot_of(model, w))
    try:
        yield model
    finally:
        state.select_index(previous)
