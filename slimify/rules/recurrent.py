"""Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``): input features and hidden units slim.

Their forward code hands ``_flat_weights`` to one fused kernel, but torch rebuilds that list from
the parameters (``getattr``) whenever they are other tensors than last time, and it reads the
sizes from ``input_size`` and ``hidden_size``. Serving the weights narrow and those two attributes
at the active width is therefore enough: the module's own forward runs a smaller recurrence.

A hidden unit is one row in each gate block of ``weight_ih``/``weight_hh``/biases (LSTM: i, f, g,
o; GRU: r, z, n), one column of ``weight_hh``, one output feature per direction and one input
column of the next layer. ``hidden_size`` is one attribute for every layer and direction, so
all of them share the hidden ids.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch.nn as nn

from slimify.analysis.space import Count
from slimify.rules.base import RuleContext, TensorVal
from slimify.rules.elementwise import fixed_output
from slimify.rules.literal_sizes import register_attr
from slimify.rules.registry import rule

__all__ = ["recurrent", "GATES"]

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}  # row blocks per hidden unit


@rule(nn.RNNBase)
def recurrent(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    m: nn.RNNBase = ctx.module
    path = ctx.path
    x = args[0] if isinstance(args[0], TensorVal) else None  # a PackedSequence has no label
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    if not _supported(m, x):
        ctx.fix_all([args, kwargs], f"{path}: {type(m).__name__} with proj_size, packed input or channels "
                                    "along its time or batch dim")
        return fixed_output(ctx)
    in_ids = ctx.channel_ids(x, x.ndim - 1)
    hidden = ctx.space.new_var(m.hidden_size, f"{path} (hidden units)")
    _serve_weights(ctx, m, path, in_ids, hidden)
    register_attr(ctx, path, "input_size", Count(in_ids))
    register_attr(ctx, path, "hidden_size", Count(hidden))
    for state in _states(hx):  # an initial state given: its features are hidden units
        ctx.space.union(ctx.channel_ids(ctx.tensor(state), state.ndim - 1), hidden)
    return _outputs(ctx, m, hidden)


def _supported(m: nn.RNNBase, x: Any) -> bool:
    """Plain (not projected) recurrences over a tensor whose channels lie along the feature dim only:
    slimming the time or batch dim would change what the recurrence sees."""
    return (isinstance(x, TensorVal) and m.mode in GATES and m.proj_size == 0 and x.ndim in (2, 3)
            and all(s == 1 for s in x.label.shape[:-1]))


def _serve_weights(ctx: RuleContext, m: nn.RNNBase, path: str, in_ids: np.ndarray, hidden: np.ndarray) -> None:
    """Rows of every gate block follow the hidden units; columns follow the layer's input."""
    directions = 2 if m.bidirectional else 1
    rows = np.tile(hidden, GATES[m.mode])
    for layer in range(m.num_layers):
        cols = in_ids if layer == 0 else np.tile(hidden, directions)
        for suffix in ("", "_reverse")[:directions]:
            ctx.space.param(path, f"weight_ih_l{layer}{suffix}", {0: rows, 1: cols})
            ctx.space.param(path, f"weight_hh_l{layer}{suffix}", {0: rows, 1: hidden})
            if m.bias:
                ctx.space.param(path, f"bias_ih_l{layer}{suffix}", {0: rows})
                ctx.space.param(path, f"bias_hh_l{layer}{suffix}", {0: rows})


def _states(hx: Any) -> list[TensorVal]:
    items = hx if isinstance(hx, (list, tuple)) else [hx]
    return [h for h in items if isinstance(h, TensorVal)]


def _outputs(ctx: RuleContext, m: nn.RNNBase, hidden: np.ndarray) -> Any:
    """``output`` carries the hidden units of each direction side by side; ``h_n`` (and LSTM's
    ``c_n``) carry them along their last dim."""
    out_shape, state_shape = ctx.out_shape
    directions = 2 if m.bidirectional else 1
    feats = np.tile(hidden, directions)
    out = TensorVal(feats.reshape([1] * (len(out_shape) - 1) + [-1]), tuple(out_shape))

    def state(shape: Any) -> TensorVal:
        return TensorVal(hidden.reshape([1] * (len(shape) - 1) + [-1]), tuple(shape))

    if isinstance(state_shape, (list, tuple)) and state_shape and not isinstance(state_shape[0], int):
        return out, tuple(state(s) for s in state_shape)
    return out, state(state_shape)
