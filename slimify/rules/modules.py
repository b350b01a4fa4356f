"""Channel rules for leaf modules, keyed by class and looked up along the MRO.

Each rule reads the analysed input, records how its parameters and plain attributes follow
the width, and returns the analysed output. A subclass (timm's ``BatchNormAct2d``,
``Conv2dSame``, ``ScaledStdConv2d``…) inherits its base's rule, and since slimmable layers serve
narrow tensors through the very attributes its forward code reads, its own forward still works.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch.nn as nn

from slimify.analysis.space import Count
from slimify.rules.base import RuleContext, TensorVal
from slimify.rules.elementwise import fixed_output, passthrough
from slimify.rules.literal_sizes import register_attr
from slimify.rules.registry import rule

__all__ = ["unknown_module", "WIDE_GROUP"]

WIDE_GROUP = 32  # channels per group from which a grouped conv slims inside each group (not
# below: LiteMLA groups q, k, v of each head in 16s, and must keep whole heads)


@rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    m: nn.Conv2d = ctx.module
    path = ctx.path
    x = ctx.tensor(args[0])
    if any(x.label.shape[d] > 1 for d in range(2, x.ndim)):
        # channels laid out along the conv's length (ECA's Conv1d over the channel axis): one
        # kernel slides over them, so a narrower input is a shorter sequence
        if x.label.shape[1] > 1:  # its own channel dim carries nothing (ECA: 1, CoaT's head: 3 scales)
            ctx.fix_all([x], f"{path}: convolution over channel ids along several dims")
            return ctx.fixed(ctx.out_shape)
        return passthrough(ctx, [x], {})
    if 1 in x.rigid and x.label.shape[0] > 1:
        return _conv_per_head(ctx, x)
    in_ids = ctx.channel_ids(x, 1)
    out_ids = ctx.space.new_var(m.out_channels, f"{path} (output channels)")
    groups = m.groups
    cin, cout = m.in_channels // groups, m.out_channels // groups
    if groups == 1:
        ctx.space.param(path, "weight", {0: out_ids, 1: in_ids})
    elif min(cin, cout) >= WIDE_GROUP:
        # wide groups (RegNet's 24–528 channels): every group keeps its first channels, so the
        # grouped conv's MACs fall with the square of the width like a dense conv's
        ctx.space.union_slabs(in_ids.reshape(groups, cin), 1)
        ctx.space.union_slabs(out_ids.reshape(groups, cout), 1)
        ctx.space.param(path, "weight", {0: out_ids, 1: in_ids[:cin]})
    else:  # narrow groups (depthwise, ResNeXt's 4 channels): whole groups are the unit, their number slims
        blocks = np.concatenate([in_ids.reshape(groups, cin), out_ids.reshape(groups, cout)], axis=1)
        ctx.space.union(blocks[:, :1], blocks)  # one union for all groups: each block is one unit
        ctx.space.param(path, "weight", {0: out_ids})
        register_attr(ctx, path, "groups", Count(in_ids, unit=cin))
    if m.bias is not None:
        ctx.space.param(path, "bias", {0: out_ids})
    for name, p in m.named_parameters(recurse=False):  # per-output-channel extras (ScaledStdConv2d.gain)
        if name not in ("weight", "bias") and p.dim() >= 1 and p.shape[0] == m.out_channels:
            ctx.space.param(path, name, {0: out_ids})
    register_attr(ctx, path, "in_channels", Count(in_ids))
    register_attr(ctx, path, "out_channels", Count(out_ids))
    return ctx.with_dim(x, 1, out_ids, ctx.out_shape)


def _conv_per_head(ctx: RuleContext, x: TensorVal) -> TensorVal:
    """Heads folded into the batch, each head's channels as the conv's (MViTv2's pooling): the
    same conv for every head, whose number slims with the batch; its channels keep their size."""
    moved = np.moveaxis(x.label, 1, -1)
    ctx.space.union(moved[..., :1], moved)
    label = np.take(x.label, [0], axis=1)
    return TensorVal(label.copy(), tuple(ctx.out_shape), frozenset({1}))


@rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_transpose(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """Transposed convs keep their weight as (in, out / groups, k…): dense ones slim both
    sides, depthwise ones (LowFormer's upsampling) pass each channel through."""
    m: nn.ConvTranspose2d = ctx.module
    path = ctx.path
    x = ctx.tensor(args[0])
    if any(x.label.shape[d] > 1 for d in range(2, x.ndim)) or m.groups not in (1, m.in_channels) or (
            m.groups > 1 and m.out_channels != m.in_channels):
        ctx.fix_all([x], f"{path}: transposed conv with groups={m.groups}")
        return fixed_output(ctx)
    in_ids = ctx.channel_ids(x, 1)
    if m.groups == 1:
        out_ids = ctx.space.new_var(m.out_channels, f"{path} (output channels)")
        ctx.space.param(path, "weight", {0: in_ids, 1: out_ids})
    else:
        out_ids = in_ids
        ctx.space.param(path, "weight", {0: in_ids})
        register_attr(ctx, path, "groups", Count(in_ids))
    if m.bias is not None:
        ctx.space.param(path, "bias", {0: out_ids})
    register_attr(ctx, path, "in_channels", Count(in_ids))
    register_attr(ctx, path, "out_channels", Count(out_ids))
    return ctx.with_dim(x, 1, out_ids, ctx.out_shape)


@rule(nn.Linear)
def linear(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    m: nn.Linear = ctx.module
    path = ctx.path
    x = ctx.tensor(args[0])
    last = x.ndim - 1
    if x.label.shape[last] == 1 and any(s > 1 for s in x.label.shape[:last]):
        # mixing along a non-channel dim (MLP-Mixer's token MLP): channels pass through, the
        # mixed dim keeps its size
        return TensorVal(x.label.copy(), tuple(ctx.out_shape), x.rigid)
    in_ids = ctx.channel_ids(x, last)
    out_ids = ctx.space.new_var(m.out_features, f"{path} (output features)")
    ctx.space.param(path, "weight", {0: out_ids, 1: in_ids})
    if m.bias is not None:
        ctx.space.param(path, "bias", {0: out_ids})
    register_attr(ctx, path, "in_features", Count(in_ids))
    register_attr(ctx, path, "out_features", Count(out_ids))
    return TensorVal(out_ids.reshape([1] * last + [-1]), tuple(ctx.out_shape))


@rule(nn.modules.batchnorm._BatchNorm)
def batchnorm(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    path = ctx.path
    x = ctx.tensor(args[0])
    ids = ctx.channel_ids(x, 1)
    ctx.space.batchnorm(path, ids)
    register_attr(ctx, path, "num_features", Count(ids))
    return passthrough(ctx, [ctx.with_dim(x, 1, ids, x.shape)], {})


@rule(nn.LayerNorm)
def layernorm(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    m: nn.LayerNorm = ctx.module
    path = ctx.path
    x = ctx.tensor(args[0])
    if len(m.normalized_shape) != 1:
        ctx.fix_all([x], f"{path}: LayerNorm over {len(m.normalized_shape)} dims")
        return ctx.fixed(ctx.out_shape)
    size = m.normalized_shape[0]
    dim = _norm_dim(x, size)
    if dim in x.rigid:  # over each head's channels (qk-norm): one norm for every head, which stay apart
        return passthrough(ctx, [x], {})
    ids = ctx.channel_ids(x, dim)
    if m.weight is not None:
        ctx.space.param(path, "weight", {0: ids})
    if getattr(m, "bias", None) is not None:
        ctx.space.param(path, "bias", {0: ids})
    register_attr(ctx, path, "normalized_shape", (Count(ids),))
    return passthrough(ctx, [_relabel(x, dim, ids)], {})


def _norm_dim(x: TensorVal, size: int) -> int:
    """The normalised dim of a LayerNorm: channels-last, or channels-first (timm's LayerNorm2d);
    when both have the normalised size (64×64×64 maps), the one carrying channels."""
    last, first = x.shape[-1] == size, x.ndim > 2 and x.shape[1] == size
    if last and first and x.label.shape[1] > 1 and x.label.shape[-1] == 1:
        return 1
    return x.ndim - 1 if last else 1


@rule(nn.GroupNorm)
def groupnorm(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    m: nn.GroupNorm = ctx.module
    path = ctx.path
    x = ctx.tensor(args[0])
    ids = ctx.channel_ids(x, 1)
    groups, channels = m.num_groups, m.num_channels
    if groups == channels:
        register_attr(ctx, path, "num_groups", Count(ids))
    elif groups > 1:  # normalisation groups are units of width: their number slims
        per = channels // groups
        ctx.space.union_slabs(ids.reshape(groups, per), 0)
        register_attr(ctx, path, "num_groups", Count(ids, unit=per))
    if m.affine:
        ctx.space.param(path, "weight", {0: ids})
        ctx.space.param(path, "bias", {0: ids})
    register_attr(ctx, path, "num_channels", Count(ids))
    return passthrough(ctx, [_relabel(x, 1, ids)], {})


@rule(nn.PReLU)
def prelu(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    m: nn.PReLU = ctx.module
    path = ctx.path
    x = ctx.tensor(args[0])
    if m.num_parameters > 1:
        ids = ctx.channel_ids(x, 1)
        ctx.space.param(path, "weight", {0: ids})
        register_attr(ctx, path, "num_parameters", Count(ids))
        x = _relabel(x, 1, ids)
    return passthrough(ctx, [x], {})


PASSTHROUGH_MODULES: tuple[type[nn.Module], ...] = (  # channel-wise modules: output channel i = input channel i
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Mish,
    nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.Softplus, nn.Hardtanh, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool2d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
    nn.Softmax, nn.LogSoftmax, nn.Softmax2d,
)


@rule(*PASSTHROUGH_MODULES)
def _passthrough_module(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    return passthrough(ctx, args[:1], {})


def unknown_module(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """No rule: the module is a boundary, every channel it touches keeps its full size."""
    m: nn.Module = ctx.module
    path = ctx.path
    ctx.fix_all([args, kwargs], f"{path}: no channel rule for module {type(m).__name__}")
    return fixed_output(ctx)  # nested results too: nn.LSTM returns (output, (h, c))




@rule(nn.Unfold, nn.Fold)
def unfold_module(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    m: nn.Module = ctx.module
    from slimify.rules.windows import fold, unfold
    return (unfold if isinstance(m, nn.Unfold) else fold)(ctx, args, kwargs)


@rule(nn.Flatten)
def flatten_module(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    from slimify.rules.reshape import reshape_to
    return reshape_to(ctx, ctx.tensor(args[0]), tuple(ctx.out_shape), None)


def _relabel(x: TensorVal, dim: int, ids: np.ndarray) -> TensorVal:
    shape = [1] * x.ndim
    shape[dim] = len(ids)
    label = np.broadcast_to(x.label, np.broadcast_shapes(x.label.shape, tuple(shape))).copy()
    label[...] = np.asarray(ids).reshape(shape)
    keep = [s if d == dim else 1 for d, s in enumerate(label.shape)]
    return TensorVal(label[tuple(slice(0, k) for k in keep)].copy(), x.shape, x.rigid)
