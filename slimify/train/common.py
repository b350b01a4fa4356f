"""Small helpers the loop, calibration and evaluation share: device choice and width iteration
that also accepts plain (unconverted) models as a single full-width switch."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch.nn as nn

import slimify
from slimify.device import resolve_device  # noqa: F401 - part of this module's API
from slimify.errors import SlimifyError

__all__ = ["resolve_device", "model_widths", "at_width", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def model_widths(model: nn.Module, widths: tuple[float, ...] | list[float] | None = None) -> tuple[float, ...]:
    """The switches to visit, widest first; a plain model has the single width 1.0."""
    model = unwrap(model)
    if not slimify.is_slimmable(model):
        if widths is not None and any(abs(w - 1.0) > 1e-9 for w in widths):
            raise SlimifyError(f"{type(model).__name__} is not slimmable: only width 1.0 exists")
        return (1.0,)
    available = slimify.switches(model)
    if widths is None:
        return tuple(sorted(available, reverse=True))
    state = slimify.state.get_state(model)
    # a switch, any uniform width in range, a configuration or its name (SlimifyError otherwise)
    chosen = [w if isinstance(w, (str, dict)) else float(w) for w in widths]
    slots = [slimify.state.slot_of(model, w) for w in chosen]
    size = [state.switches[i] if i < len(state.switches) else state.slots[i - len(state.switches)].width
            for i in slots]
    return tuple(w for _, w in sorted(zip(size, chosen), key=lambda p: p[0], reverse=True))


@contextlib.contextmanager
def at_width(model: nn.Module, w: float) -> Iterator[nn.Module]:
    """``slimify.width`` for slimmable models, a no-op for plain ones."""
    inner = unwrap(model)
    if slimify.is_slimmable(inner):
        with slimify.width(inner, w):
            yield model
    else:
        yield model
