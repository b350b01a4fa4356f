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
    (finetune's, kept in the ``.slim`` for ``profile``'s plot)."""

    report: ConversionReport | None = None
    analysis: Analysis | None = None
    divisor: int | None = 8
    reorder: Reordering | None = None
    example_shape: list[int] | None = None
    evaluation: dict[str, Any] | None = None  # see slimify.deploy.accuracy
    example_inputs: dict[str, Any] | None = None


@dataclass
class SlimState:
    """Switches of a converted model and the index of the active one.

    ``on_switch`` callbacks run after the index changes (they update plain attributes such as
    ``num_heads`` that forward code reads, so forward itself never reassigns anything).
    """

    switches: tuple[float, ...]
    index: int = -1  # index into ``switches``; -1 is the widest
    on_switch: list[Callable[[int], None]] = field(default_factory=list, repr=False)
    record: ConversionRecord = field(default_factory=ConversionRecord, repr=False)

    def __post_init__(self) -> None:
        self.index = len(self.switches) - 1

    @property
    def width(self) -> float:
        return self.switches[self.index]

    @property
    def is_full(self) -> bool:
        return self.index == len(self.switches) - 1 and self.switches[-1] == 1.0

    def select(self, w: float) -> None:
        idx = self.index_of(w)
        if idx != self.index:
            self.index = idx
            for callback in self.on_switch:
                callback(idx)

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


def set_width(model: nn.Module, w: float) -> None:
    """Make every slimmable part of ``model`` run at switch ``w`` (must be one of its switches)."""
    get_state(model).select(w)


@contextlib.contextmanager
def width(model: nn.Module, w: float) -> Iterator[nn.Module]:
    """``with slimify.width(model, 0.5): model(x)`` runs at width 0.5 and restores the old width."""
    state = get_state(model)
    previous = state.width
    state.select(w)
    try:
        yield model
    finally:
        state.select(previous)
