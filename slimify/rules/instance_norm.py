"""``nn.InstanceNorm1d/2d/3d`` (RAFT's feature encoder): each channel is normalised on its own,
so channels pass through; the affine weight and bias and any running statistics are per channel."""
from __future__ import annotations

import torch.nn as nn

from slimify.analysis.space import Count
from slimify.rules.base import RuleContext, TensorVal
from slimify.rules.elementwise import passthrough
from slimify.rules.literal_sizes import register_attr
from slimify.rules.registry import rule

__all__ = ["instance_norm"]


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
