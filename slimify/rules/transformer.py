"""``nn.TransformerEncoderLayer`` and ``nn.TransformerEncoder``: torch.nn modules, so leaves of the
trace, whose forward either runs ``self_attn``, ``linear1``/``linear2`` and two LayerNorms or, in
eval mode without grad, hands the very same tensors to the fused
``torch._transformer_encoder_layer_fwd``. Either way the layer reads its sizes from those
submodules' weights and attributes, so the rule is the composition of their rules: the residual
stream is tied to the attention heads (``nn.MultiheadAttention`` reads the width from its input),
the feed-forward hidden units slim on their own.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from slimify.rules.attention import multihead_attention
from slimify.rules.base import RuleContext, TensorVal
from slimify.rules.elementwise import elementwise, fixed_output
from slimify.rules.linalg import with_shape
from slimify.rules.modules import layernorm, linear
from slimify.rules.registry import Rule, rule

__all__ = ["encoder_layer", "encoder"]


def _submodule(ctx: RuleContext, module: nn.Module, path: str, fn: Rule, args: list) -> Any:
    """A submodule's rule, as if it were the node: ``ctx.module``/``ctx.path`` name the submodule
    while it runs."""
    outer = ctx.module, ctx.path
    ctx.module, ctx.path = module, path
    try:
        return fn(ctx, args, {})
    finally:
        ctx.module, ctx.path = outer


def _layer(ctx: RuleContext, m: nn.TransformerEncoderLayer, path: str, x: TensorVal) -> TensorVal:
    shape = torch.Size(x.shape)

    def attention(t: TensorVal) -> TensorVal:  # a submodule's rule, as if it were the node
        call = lambda: _submodule(ctx, m.self_attn, f"{path}.self_attn", multihead_attention, [t, t, t])  # noqa: E731
        return with_shape(ctx, (shape, None), call)[0]

    def feed_forward(t: TensorVal) -> TensorVal:
        hidden_shape = torch.Size((*shape[:-1], m.linear1.out_features))
        hidden = with_shape(ctx, hidden_shape, lambda: _submodule(ctx, m.linear1, f"{path}.linear1", linear, [t]))
        ctx.space.mark_seen(hidden.label)
        ctx.space.mark_read(t.label)
        ctx.space.mark_read(hidden.label)
        return with_shape(ctx, shape, lambda: _submodule(ctx, m.linear2, f"{path}.linear2", linear, [hidden]))

    def norm(name: str, t: TensorVal) -> TensorVal:
        return with_shape(ctx, shape, lambda: _submodule(ctx, getattr(m, name), f"{path}.{name}", layernorm, [t]))

    def add(a: TensorVal, b: TensorVal) -> TensorVal:
        return with_shape(ctx, shape, lambda: elementwise(ctx, [a, b], {}))

    ctx.space.mark_read(x.label)
    if m.norm_first:
        x = add(x, attention(norm("norm1", x)))
        return add(x, feed_forward(norm("norm2", x)))
    x = norm("norm1", add(x, attention(x)))
    return norm("norm2", add(x, feed_forward(x)))


def _supported(layer: nn.Module) -> bool:
    return (isinstance(layer, nn.TransformerEncoderLayer) and isinstance(layer.linear1, nn.Linear)
            and isinstance(layer.linear2, nn.Linear) and all(isinstance(getattr(layer, n), nn.LayerNorm)
                                                              for n in ("norm1", "norm2")))


@rule(nn.TransformerEncoderLayer)
def encoder_layer(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    m: nn.TransformerEncoderLayer = ctx.module
    path = ctx.path
    src = args[0] if args else kwargs.get("src")
    if not _supported(m) or not isinstance(src, TensorVal):
        ctx.fix_all([args, kwargs], f"{path}: TransformerEncoderLayer with replaced submodules")
        return fixed_output(ctx)
    return _layer(ctx, m, path, ctx.tensor(src))


@rule(nn.TransformerEncoder)
def encoder(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    """Its layers one after the other, then ``norm``; its forward reads sizes only through them."""
    m: nn.TransformerEncoder = ctx.module
    path = ctx.path
    src = args[0] if args else kwargs.get("src")
    if not all(_supported(layer) for layer in m.layers) or not isinstance(src, TensorVal) or not (
            m.norm is None or isinstance(m.norm, nn.LayerNorm)):
        ctx.fix_all([args, kwargs], f"{path}: TransformerEncoder with replaced layers")
        return fixed_output(ctx)
    x = ctx.tensor(src)
    for i, layer in enumerate(m.layers):
        x = _layer(ctx, layer, f"{path}.layers.{i}", x)
    if m.norm is not None:
        norm = m.norm
        x = with_shape(ctx, torch.Size(x.shape), lambda: _submodule(ctx, norm, f"{path}.norm", layernorm, [x]))
    return x
