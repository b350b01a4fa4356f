"""The one width setting a converted model shares with all of its slimmable parts.

Every slimmable module holds a reference to the same :class:`SlimState`; switching width is one
assignment, never a walk over the modules (STYLE.md lesson 8).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from slimify.errors import SlimifyError

__all__ = ["SlimState", "get_state", "is_slimmable", "switches", "set_width", "width", "get_width"]

STATE_ATTR = "_slimify_state"


@dataclass
class SlimState:
    """Switches of a converted model and the index of the active one.

    ``on_switch`` callbacks run after the index changes (they update plain attributes such as
    ``num_heads`` that forward code reads, so forward itself never reassigns anything).
    """

    switches: tuple[float, ...]
    index: int = -1  # index into ``switches``, or beyond them into ``slots``; -1 is the widest
    on_switch: list[Callable[[int], None]] = field(default_factory=list, repr=False)
    info: dict[str, Any] = field(default_factory=dict, repr=False)  # conversion settings, plan
    # width configurations served after the switches (``slimify.configs``), each with a ``width``
    slots: list[Any] = field(default_factory=list, repr=False)

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


def slot_of(model: nn.Module, w: Any) -> int:
    """The slot serving ``w``: a switch's index, else a width configuration's (``slimify.configs``
    computes its cuts once and caches them)."""
    state = get_state(model)
    if isinstance(w, (int, float)) and not isinstance(w, bool):
        for i, s in enumerate(state.switches):
            if abs(s - float(w)) < 1e-9:
                return i
    from slimify.configs import config_slot  # lazy: configs imports the plan machinery

    return config_slot(model, w)


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
