"""A converted feature model keeps its output shape at every width.

When the model returns features (no classifier: a residual stream, pooled; or a backbone's list
of feature maps, timm's ``features_only=True``) instead of logits, narrow switches compute fewer
features; a forward hook on the model pads them back to full size with zeros, each returned
tensor along its channel dim. Downstream code sees the original shapes, and a head on top reads
exactly what a slimmable consumer would: the first k features (the rest contribute nothing).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimify.state import SlimState

__all__ = ["OutputPad", "PadOutputs", "pad_outputs", "find_output_pad", "remove_output_pad"]

Layout = list[tuple[int, int, int]]  # per padded tensor: (its index in the output, channel dim, full size)


def pad_outputs(output: Any, layout: Layout, missing: tuple[int, ...]) -> Any:
    """``output`` (a tensor, or a list/tuple of them) with each tensor of ``layout`` padded with
    ``missing`` zeros at the end of its channel dim."""
    leaves = [output] if isinstance(output, torch.Tensor) else list(output)
    for (leaf, dim, _), m in zip(layout, missing):
        if m:
            t = leaves[leaf]
            leaves[leaf] = F.pad(t, [0, 0] * (t.ndim - 1 - dim % t.ndim) + [0, m])
    return leaves[0] if isinstance(output, torch.Tensor) else type(output)(leaves)


class PadOutputs(nn.Module):
    """The padding of one width as a plain torch module (for export of a several-tensor output)."""

    def __init__(self, layout: Layout, missing: tuple[int, ...]) -> None:
        super().__init__()
        self.layout, self.missing = [tuple(e) for e in layout], tuple(missing)

    def forward(self, output: Any) -> Any:
        return pad_outputs(output, self.layout, self.missing)


class OutputPad:
    """Forward hook: pads each tensor of ``layout`` from this switch's width to its full size.
    ``widths``: per slot, the active channels of each tensor of ``layout``."""

    def __init__(self, state: SlimState, widths: list[tuple[int, ...]], layout: Layout) -> None:
        self.state, self.widths, self.layout = state, [tuple(w) for w in widths], [tuple(e) for e in layout]

    def missing(self) -> tuple[int, ...]:
        return tuple(size - w for (_, _, size), w in zip(self.layout, self.widths[self.state.index]))

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        missing = self.missing()
        return pad_outputs(output, self.layout, missing) if any(missing) else None

    def plain(self) -> nn.Module | None:
        """The same padding at the active switch as a plain torch module (for export): ``nn.ZeroPad1d``
        for one tensor padded along its last dim."""
        missing = self.missing()
        if not any(missing):
            return None
        if len(self.layout) == 1 and self.layout[0][1] == -1:
            return nn.ZeroPad1d((0, missing[0]))
        return PadOutputs(self.layout, missing)


def find_output_pad(model: nn.Module) -> OutputPad | None:
    return next((hook for hook in model._forward_hooks.values() if isinstance(hook, OutputPad)), None)


def remove_output_pad(model: nn.Module) -> None:
    """Take the padding hook off ``model`` (an exported copy pads with a plain module instead)."""
    for key in [k for k, hook in model._forward_hooks.items() if isinstance(hook, OutputPad)]:
        del model._forward_hooks[key]
