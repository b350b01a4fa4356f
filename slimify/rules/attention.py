"""Attention whose heads are the unit of width, for code the tracer cannot see into:
``nn.MultiheadAttention`` and torchvision's ``shifted_window_attention``. (Attention written
with plain ops — timm's — is traced and handled by the reshape/matmul/sdpa rules.)

Heads keep their size (head_dim); their number slims. q, k, v and the output projection's
input follow the heads, per-head tables (relative position bias, logit scale) follow them too,
and the attributes forward code reads (``num_heads``, ``embed_dim``) follow the active switch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx
import torch.nn as nn

from slimify.analysis.space import Count
from slimify.rules.base import ParamVal, RuleContext, TensorVal
from slimify.rules.literal_sizes import follow_literal, register_attr
from slimify.rules.registry import rule

__all__ = ["head_units", "multihead_attention", "multi_head_attention_forward", "shifted_window_attention",
           "relative_position_bias", "decomposed_rel_pos"]


def head_units(ctx: RuleContext, pieces: list[np.ndarray], heads: int) -> np.ndarray:
    """Make head ``h`` of every piece (q, k, v laid out heads × head_dim) one unit; returns one
    representative id per head."""
    blocks = [np.asarray(p).reshape(heads, -1) for p in pieces]
    joint = np.concatenate(blocks, axis=1)
    ctx.space.union(joint[:, :1], joint)
    return joint[:, 0].copy()


def _arg(args: list, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    return args[i] if len(args) > i else kwargs.get(name, default)


def _tie_width(ctx: RuleContext, inputs: np.ndarray, inner: np.ndarray) -> None:
    """Forward code reads the attention width from its input (``E = query.shape[-1]``), so the
    input channels and the attention channels keep equal widths: tied position by position."""
    ctx.space.union(inputs, inner)


def _serve(ctx: RuleContext, p: Any, ids: np.ndarray) -> None:
    """A bias or per-head table passed in: a parameter is served narrow along dim 0, a computed
    tensor's channels are tied to ``ids``."""
    if isinstance(p, ParamVal):
        ctx.space.param(p.module, p.name, {0: ids})
    elif isinstance(p, TensorVal):
        if p.shape[0] == len(ids):
            ctx.space.union(ctx.channel_ids(p, 0), ids)
        else:
            ctx.fix_all([p], f"a computed bias of unexpected size at {ctx.space.context}")


# video Swin's 3-D twins take the same arguments at the same places (T·H·W windows)
@rule("torchvision.models.swin_transformer:_get_relative_position_bias",
      "torchvision.models.video.swin_transformer:_get_relative_position_bias")
def relative_position_bias(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """torchvision's ``_get_relative_position_bias(table, index, window)``: a (L, heads) table
    gathered to (1, heads, N, N); one column per head."""
    table = ctx.tensor(args[0])
    head_ids = ctx.channel_ids(table, 1)
    return ctx.with_dim(table, 1, head_ids, tuple(ctx.out_shape))


@rule(nn.MultiheadAttention)
def multihead_attention(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    """``nn.MultiheadAttention`` (torchvision's ViT): in_proj rows, out_proj columns, bias_k/v
    and ``embed_dim``/``num_heads`` follow the heads; the input width is tied to them because
    ``F.multi_head_attention_forward`` checks ``query.shape[-1] == embed_dim``."""
    m: nn.MultiheadAttention = ctx.module
    path = ctx.path
    q, k, v = (ctx.tensor(_arg(args, kwargs, i, n)) for i, n in enumerate(("query", "key", "value")))
    out_shapes = ctx.out_shape
    if not m._qkv_same_embed_dim or m.add_zero_attn or m.in_proj_weight is None:
        ctx.fix_all([args, kwargs], f"{path}: MultiheadAttention with separate k/v sizes or zero attention")
        return tuple(None if s is None else ctx.fixed(tuple(s)) for s in out_shapes)
    heads, e = m.num_heads, m.embed_dim
    ins = [ctx.channel_ids(t, t.ndim - 1) for t in (q, k, v)]
    inner = ctx.space.new_var(3 * e, f"{path} (q, k, v)")
    qi, ki, vi = inner[:e], inner[e:2 * e], inner[2 * e:]
    head_ids = head_units(ctx, [qi, ki, vi], heads)
    for x_ids, piece in zip(ins, (qi, ki, vi)):
        _tie_width(ctx, x_ids, piece)
    ctx.space.param(path, "in_proj_weight", {0: inner, 1: ins[0]})
    if m.in_proj_bias is not None:
        ctx.space.param(path, "in_proj_bias", {0: inner})
    for name, ids in (("bias_k", ki), ("bias_v", vi)):
        if getattr(m, name) is not None:
            ctx.space.param(path, name, {2: ids})
    out_ids = ctx.space.new_var(m.out_proj.out_features, f"{path}.out_proj (output features)")
    ctx.space.param(f"{path}.out_proj", "weight", {0: out_ids, 1: vi})
    if m.out_proj.bias is not None:
        ctx.space.param(f"{path}.out_proj", "bias", {0: out_ids})
    register_attr(ctx, f"{path}.out_proj", "in_features", Count(vi))
    register_attr(ctx, f"{path}.out_proj", "out_features", Count(out_ids))
    for name, ids in (("embed_dim", qi), ("kdim", ki), ("vdim", vi)):
        register_attr(ctx, path, name, Count(ids))
    register_attr(ctx, path, "num_heads", Count(head_ids))
    out = TensorVal(out_ids.reshape([1] * (q.ndim - 1) + [-1]), tuple(out_shapes[0]))
    return (out, None if out_shapes[1] is None else ctx.fixed(tuple(out_shapes[1])))


# F.multi_head_attention_forward's arguments by position (keywords by the same names)
_MHA_ARGS = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
             "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
             "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
             "k_proj_weight", "v_proj_weight", "static_k", "static_v")


@rule("multi_head_attention_forward")
def multi_head_attention_forward(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    """``F.multi_head_attention_forward`` called by model code (open_clip's ModifiedResNet attention
    pool, with separate q/k/v weights and a concatenated bias): the rule of ``nn.MultiheadAttention``
    on the weights passed in. Heads are the unit; ``num_heads`` and a literal ``embed_dim_to_check``
    follow their attributes; the inputs are tied to the heads (``head_dim = query.shape[-1] // num_heads``)."""
    a = {name: _arg(args, kwargs, i, name) for i, name in enumerate(_MHA_ARGS)}
    out_shapes = ctx.out_shape
    separate = bool(a["use_separate_proj_weight"])
    weights = [a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]] if separate else [a["in_proj_weight"]]
    heads = a["num_heads"]
    if (not all(isinstance(w, ParamVal) for w in weights + [a["out_proj_weight"]]) or not isinstance(heads, int)
            or any(a[n] is not None for n in ("bias_k", "bias_v", "static_k", "static_v")) or a["add_zero_attn"]):
        ctx.fix_all([args, kwargs], f"multi_head_attention_forward with computed weights, bias_k/v or zero "
                                    f"attention at {ctx.space.context}")
        return tuple(None if s is None else ctx.fixed(tuple(s)) for s in out_shapes)
    q, k, v = (ctx.tensor(a[n]) for n in ("query", "key", "value"))
    ins = [ctx.channel_ids(t, t.ndim - 1) for t in (q, k, v)]
    e = weights[0].tensor.shape[0] // (1 if separate else 3)
    inner = ctx.space.new_var(3 * e, f"{_owner(weights[0])} (q, k, v)")
    pieces = [inner[:e], inner[e:2 * e], inner[2 * e:]]
    head_ids = head_units(ctx, pieces, heads)
    for x_ids, piece in zip(ins, pieces):
        _tie_width(ctx, x_ids, piece)
    if separate:
        for w, piece, x_ids in zip(weights, pieces, ins):
            ctx.space.param(w.module, w.name, {0: piece, 1: x_ids})
    else:
        ctx.space.param(weights[0].module, weights[0].name, {0: inner, 1: ins[0]})
    _serve(ctx, a["in_proj_bias"], inner)
    out_w = a["out_proj_weight"]
    out_ids = ctx.space.new_var(out_w.tensor.shape[0], f"{_owner(out_w)} (output features)")
    ctx.space.param(out_w.module, out_w.name, {0: out_ids, 1: pieces[2]})
    _serve(ctx, a["out_proj_bias"], out_ids)
    check = ctx.node.args[3] if len(ctx.node.args) > 3 else ctx.node.kwargs.get("embed_dim_to_check")
    if not follow_literal(ctx, heads, Count(head_ids), units=True) or (
            not isinstance(check, fx.Node) and not follow_literal(ctx, a["embed_dim_to_check"], Count(pieces[0]))):
        ctx.fix_all([q, k, v], f"num_heads={heads} or embed_dim_to_check of multi_head_attention_forward has no "
                               f"attribute to follow at {ctx.space.context}")
    out = TensorVal(out_ids.reshape([1] * (q.ndim - 1) + [-1]), tuple(out_shapes[0]))
    return (out, None if out_shapes[1] is None else ctx.fixed(tuple(out_shapes[1])))


def _owner(p: ParamVal) -> str:
    return p.module or p.name


@rule("torchvision.models.swin_transformer:shifted_window_attention",
      "torchvision.models.video.swin_transformer:shifted_window_attention_3d")
def shifted_window_attention(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """torchvision's Swin/SwinV2 window attention (an fx-wrapped function). It reshapes q/k/v
    with ``C // num_heads`` where C is the input width, so the input is tied to the heads."""
    x = ctx.tensor(args[0])
    qkv_w, proj_w, bias = args[1], args[2], ctx.tensor(args[3])
    heads = _arg(args, kwargs, 5, "num_heads")
    qkv_b, proj_b = _arg(args, kwargs, 9, "qkv_bias"), _arg(args, kwargs, 10, "proj_bias")
    logit_scale = _arg(args, kwargs, 11, "logit_scale")
    if not isinstance(qkv_w, ParamVal) or not isinstance(proj_w, ParamVal) or not isinstance(heads, int):
        ctx.fix_all([args, kwargs], f"shifted_window_attention with computed weights at {ctx.space.context}")
        return ctx.fixed(tuple(ctx.out_shape))
    c = x.shape[-1]
    in_ids = ctx.channel_ids(x, x.ndim - 1)
    inner = ctx.space.new_var(3 * c, f"{qkv_w.module} (q, k, v)")
    qi, ki, vi = inner[:c], inner[c:2 * c], inner[2 * c:]
    head_ids = head_units(ctx, [qi, ki, vi], heads)
    _tie_width(ctx, in_ids, qi)  # C // num_heads and reshape(..., C) read the input width
    ctx.space.param(qkv_w.module, qkv_w.name, {0: inner, 1: in_ids})
    _serve(ctx, qkv_b, inner)
    if bias.label.size > 1:  # (1, heads, N, N): one table per head
        ctx.space.union(ctx.channel_ids(bias, 1), head_ids)
    _serve(ctx, logit_scale, head_ids)
    out_ids = ctx.space.new_var(proj_w.tensor.shape[0], f"{proj_w.module} (output features)")
    ctx.space.param(proj_w.module, proj_w.name, {0: out_ids, 1: vi})
    _serve(ctx, proj_b, out_ids)
    _tie_width(ctx, in_ids, out_ids)  # the result is viewed with the input's C
    if not follow_literal(ctx, heads, Count(head_ids), units=True):
        ctx.fix_all([x], f"num_heads={heads} of shifted_window_attention has no attribute to follow")
    return ctx.with_dim(x, x.ndim - 1, out_ids, tuple(ctx.out_shape))


@rule("timm.models.mvitv2:cal_rel_pos_type")
def decomposed_rel_pos(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """MViTv2's ``cal_rel_pos_type(attn, q, …, rel_pos_h, rel_pos_w)``: attention logits plus
    ``q · table`` along height and width. The tables are shared by the heads; when a single head's
    channels slim instead, the tables' channel dim follows them."""
    attn, q = ctx.tensor(args[0]), ctx.tensor(args[1])
    tables = [args[i] if len(args) > i else kwargs.get(n) for i, n in ((5, "rel_pos_h"), (6, "rel_pos_w"))]
    if q.carries(1):
        ctx.space.union(ctx.channel_ids(q, 1), ctx.channel_ids(attn, 1))
    if q.carries(3) or not all(isinstance(t, ParamVal) for t in tables):
        if q.carries(1) or not all(isinstance(t, ParamVal) for t in tables):
            ctx.fix_all([args], f"relative positions of several heads' channels at {ctx.space.context}")
            return ctx.fixed(tuple(ctx.out_shape))
        for t in tables:
            ctx.space.param(t.module, t.name, {1: ctx.channel_ids(q, 3)})
    return TensorVal(attn.label.copy(), tuple(ctx.out_shape), attn.rigid)
