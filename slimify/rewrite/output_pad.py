"""A converted feature model keeps its output shape at every width.

When the model returns features (no classifier: a residual stream, pooled) instead of logits,
narrow switches compute fewer features; a forward hook on the model pads them back to full size
with zeros. Downstream code sees the original shape, and a head on top reads exactly what a
slimmable consumer would: the first k features (the rest contribute nothing).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimify.state import SlimState

__all__ = ["OutputPad", "find_output_pad", "remove_output_pad"]


class OutputPad:
    """Forward hook: pads the last dim of the output from this switch's width to ``size``."""

    def __init__(self, state: SlimState, widths: list[int], size: int) -> None:
        self.state, self.widths, self.size = state, list(widths), size

    def missing(self) -> int:
        return self.size - self.widths[self.state.index]

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        missing = self.missing()
        return F.pad(output, (0, missing)) if missing else None

    def plain(self) -> nn.Module | None:
        """The same padding at the active switch as a plain torch module (for export)."""
        missing = self.missing()
        return nn.ZeroPad1d((0, missing)) if missing else None


def find_output_pad(model: nn.Module) -> OutputPad | None:
    return next((hook for hook in model._forward_hooks.values() if isinstance(hook, OutputPad)), None)


def remove_output_pad(model: nn.Module) -> None:
    """Take the padding hook off ``model`` (an exported copy pads with a plain module instead)."""
    for key in [k for k, hook in model._forward_hooks.items() if isinstance(hook, OutputPad)]:
        del model._forward_hooks[key]
