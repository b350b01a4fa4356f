"""``nn.InstanceNorm1d/2d/3d`` (RAFT's feature encoder): each channel is normalised on its own,
so channels pass through; the affine weight and bias and any running statistics are per channel.
Their functional entry points, and ``F.batch_norm`` called by model code with the module's own
tensors, follow the same rule: every per-channel tensor passed in is served narrow along dim 0."""
from __future__ import annotations

import torch.nn as nn

from slimify.analysis.space import Count
from slimify.rules.base import ParamVal, RuleContext, TensorVal
from slimify.rules.elementwise import passthrough
from slimify.rules.literal_sizes import register_attr
from slimify.rules.registry import rule

__all__ = ["instance_norm", "per_channel_norm_fn"]


@rule(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def instance_norm(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    m: nn.modules.instancenorm._InstanceNorm = ctx.module
    path = ctx.path
    x = ctx.tensor(args[0])
    ids = ctx.channel_ids(x, 1)
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(m, name, None) is not None:
            ctx.space.param(path, name, {0: ids})
    register_attr(ctx, path, "num_features", Count(ids))
    return passthrough(ctx, [ctx.with_dim(x, 1, ids, x.shape)], {})


# the per-channel tensors of each function by position (keywords by the same names)
_PER_CHANNEL = {"batch_norm": ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")),
                "instance_norm": ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))}


@rule(*_PER_CHANNEL)
def per_channel_norm_fn(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, …)`` and
    ``F.instance_norm``: channels along dim 1 pass through; a parameter or buffer passed in is served
    narrow, a computed per-channel tensor is tied to the channels."""
    x = ctx.tensor(args[0])
    ids = ctx.channel_ids(x, 1)
    name = getattr(ctx.node.target, "__name__", str(ctx.node.target))
    for i, key in _PER_CHANNEL.get(name, _PER_CHANNEL["batch_norm"]):
        p = args[i] if len(args) > i else kwargs.get(key)
        if isinstance(p, ParamVal):
            ctx.space.param(p.module, p.name, {0: ids})
        elif isinstance(p, TensorVal):
            ctx.space.union(ctx.channel_ids(p, 0), ids)
    return passthrough(ctx, [ctx.with_dim(x, 1, ids, x.shape)], {})
