"""Window, grid and patch functions that model code wraps as fx leaves (Swin, MaxViT, NesT…):
they move space around and leave every channel where it was, or fold space into channels.

``WINDOW_FUNCTIONS`` maps each such function to (channel dim of its first input, channel dim of
its output); the other dims of the input must carry no channels, else the channels are fixed.
"""
from __future__ import annotations

import numpy as np
import torch.nn.functional as F

from slimify.analysis.space import Count
from slimify.rules.base import FunctionRule, RuleContext, TensorVal
from slimify.rules.registry import rule

__all__ = ["channel_dims", "patch_merging_pad", "unfold", "fold", "pre_pool", "post_pool"]


def channel_dims(d_in: int, d_out: int) -> FunctionRule:
    """Rule for a function that keeps the channels of its first input in dim ``d_in`` and
    returns them in dim ``d_out``, rearranging only the other (spatial) dims. A parameter's
    ids along those dims (a position embedding being resized) join their channel's."""

    def rule(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
        x = ctx.tensor(args[0])
        out_shape = tuple(ctx.out_shape)
        d = d_in % x.ndim
        spread = any(x.carries(o) for o in range(x.ndim) if o != d)
        if (spread and not ctx.is_table(x.label)) or x.shape[d] != out_shape[d_out % len(out_shape)]:
            ctx.fix_all([args, kwargs], f"channels spread over several dims at {ctx.space.context}")
            return ctx.fixed(out_shape)
        if x.label.shape[d] == 1:
            return ctx.fixed(out_shape) if (x.label == 0).all() else TensorVal(
                x.label.reshape(-1)[:1].reshape([1] * len(out_shape)), out_shape)
        ids = ctx.channel_ids(x, d)
        return ctx.with_dim(x, d_out % len(out_shape), ids, out_shape)

    rule.__name__ = f"channel_dims_{d_in}_{d_out}"
    return rule


@rule("torchvision.models.swin_transformer:_patch_merging_pad")
def patch_merging_pad(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """torchvision Swin's ``_patch_merging_pad``: (B, H, W, C) → (B, H/2, W/2, 4C), the four
    2×2 neighbours concatenated: the channel ids repeat four times."""
    x = ctx.tensor(args[0])
    ids = ctx.channel_ids(x, x.ndim - 1)
    out_shape = tuple(ctx.out_shape)
    return ctx.with_dim(x, len(out_shape) - 1, np.tile(ids, out_shape[-1] // len(ids)), out_shape)


@rule(F.unfold)  # not Tensor.unfold(dim, size, step): another op
def unfold(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``F.unfold`` (VOLO's outlooker): (B, C, H, W) → (B, C·k², L), channel-major: every
    channel id repeats k² times."""
    x = ctx.tensor(args[0])
    out_shape = tuple(ctx.out_shape)
    if any(x.carries(d) for d in range(2, x.ndim)):
        ctx.fix_all([x], f"unfold over channel ids at {ctx.space.context}")
        return ctx.fixed(out_shape)
    ids = ctx.channel_ids(x, 1)
    return ctx.with_dim(x, 1, np.repeat(ids, out_shape[1] // x.shape[1]), out_shape)


@rule(F.fold)
def fold(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``F.fold``: (B, C·k², L) → (B, C, H, W); the k² entries of a channel must be one channel."""
    x = ctx.tensor(args[0])
    out_shape = tuple(ctx.out_shape)
    if x.carries(2) or x.shape[1] % out_shape[1]:
        ctx.fix_all([x], f"fold over channel ids at {ctx.space.context}")
        return ctx.fixed(out_shape)
    ids = ctx.channel_ids(x, 1).reshape(out_shape[1], -1)
    ctx.space.union(ids[:, :1], ids)
    return ctx.with_dim(x, 1, ids[:, 0].copy(), out_shape)


@rule("timm.models.mvitv2:reshape_pre_pool")
def pre_pool(ctx: RuleContext, args: list, kwargs: dict) -> tuple:
    """MViTv2's ``reshape_pre_pool``: (B, heads, [cls +] H·W, head_dim) → heads into the batch,
    head_dim as channels: (B·heads, head_dim, H, W), and the class token (B, heads, 1, head_dim)."""
    x = ctx.tensor(args[0])
    shapes = ctx.out_shape
    if x.carries(2) or x.label.shape[0] > 1:
        ctx.fix_all([x], f"pooling of heads at {ctx.space.context}")
        return tuple(None if s is None else ctx.fixed(tuple(s)) for s in shapes)
    inner = x.label[0, :, 0, :]  # heads × head_dim (one head: its channels slim instead)
    rigid = frozenset({1}) if 3 in x.rigid else frozenset()
    pooled = TensorVal(inner.reshape(inner.shape + (1, 1)).copy(), tuple(shapes[0]), rigid)
    tok = None if shapes[1] is None else TensorVal(x.label.copy(), tuple(shapes[1]), x.rigid)
    return pooled, tok


@rule("timm.models.mvitv2:reshape_post_pool")
def post_pool(ctx: RuleContext, args: list, kwargs: dict) -> tuple:
    """MViTv2's ``reshape_post_pool``: back to (B, heads, [cls +] H'·W', head_dim)."""
    from slimify.rules.literal_sizes import follow_literal
    x = ctx.tensor(args[0])
    heads = args[1] if len(args) > 1 else kwargs["num_heads"]
    tok = args[2] if len(args) > 2 else kwargs.get("cls_tok")
    out = ctx.out_shape[0]
    label = x.label[:, :, 0, 0] if x.label.ndim == 4 else None
    feat_size = [x.shape[2], x.shape[3]]  # the function's second result
    if label is None or label.shape[0] not in (1, heads) or (
            label.shape[0] > 1 and not follow_literal(ctx, heads, Count(label[:, 0]), units=True)):
        ctx.fix_all([x, tok], f"pooling of heads at {ctx.space.context}")
        return ctx.fixed(tuple(out)), feat_size
    result = label.reshape(1, label.shape[0], 1, -1)
    if isinstance(tok, TensorVal):
        ctx.space.union(np.broadcast_to(tok.label, np.broadcast_shapes(tok.label.shape, result.shape)),
                        np.broadcast_to(result, np.broadcast_shapes(tok.label.shape, result.shape)))
    return TensorVal(result.copy(), tuple(out), frozenset({3}) if 1 in x.rigid else frozenset()), feat_size


# functions model libraries wrap as fx leaves: "module:function" → rule (absent in other library versions: skipped)
_LAST, _FIRST = channel_dims(-1, -1), channel_dims(1, 1)
rule("timm.models.swin_transformer:window_reverse", "timm.models.swin_transformer_v2:window_reverse",
     "timm.models.swin_transformer_v2_cr:window_reverse", "timm.models.davit:window_reverse",
     "timm.models.gcvit:window_reverse", "timm.models.maxxvit:window_reverse", "timm.models.maxxvit:grid_reverse",
     "timm.models.nest:deblockify",
     "timm.models.naflexvit:global_pool_naflex",  # (B, N, C) → (B, C)
     "timm.layers.pos_embed:resample_abs_pos_embed", "timm.layers.pos_embed:resample_abs_pos_embed_nhwc")(_LAST)
rule("timm.models.maxxvit:window_reverse_nchw", "timm.models.maxxvit:grid_reverse_nchw")(_FIRST)
