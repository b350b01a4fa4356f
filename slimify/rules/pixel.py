"""``pixel_shuffle``/``pixel_unshuffle`` (super-resolution heads, space-to-depth stems): channels
and pixels trade places in blocks of r².

``pixel_shuffle(r)`` makes output channel c from input channels c·r² … c·r²+r²-1: those r²
channels are one unit (they sit next to each other, so a prefix of units is a prefix of
channels), and the output keeps one id per unit. ``pixel_unshuffle(r)`` is the inverse: each input
channel becomes r² neighbouring output channels, all with its id.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimify.rules.base import RuleContext, TensorVal
from slimify.rules.registry import rule

__all__ = ["pixel_shuffle", "pixel_unshuffle"]


def _factor(args: list, kwargs: dict, name: str) -> Any:
    return args[1] if len(args) > 1 else kwargs.get(name)


def _shuffle(ctx: RuleContext, x: TensorVal, r: int) -> TensorVal:
    if not x.carries(x.ndim - 3) or any(x.label.shape[d] > 1 for d in range(x.ndim - 2, x.ndim)):
        return _spatial_or_fixed(ctx, x)
    ids = ctx.channel_ids(x, x.ndim - 3).reshape(-1, r * r)
    ctx.space.union(ids[:, :1], ids)
    return ctx.with_dim(x, x.ndim - 3, ids[:, 0].copy(), tuple(ctx.out_shape))


def _unshuffle(ctx: RuleContext, x: TensorVal, r: int) -> TensorVal:
    if not x.carries(x.ndim - 3) or any(x.label.shape[d] > 1 for d in range(x.ndim - 2, x.ndim)):
        return _spatial_or_fixed(ctx, x)
    ids = np.repeat(ctx.channel_ids(x, x.ndim - 3), r * r)
    return ctx.with_dim(x, x.ndim - 3, ids, tuple(ctx.out_shape))


def _spatial_or_fixed(ctx: RuleContext, x: TensorVal) -> TensorVal:
    """No channels along the channel dim: nothing to move (a fixed image in, a fixed one out)."""
    if any(n > 1 for n in x.label.shape):
        ctx.fix_all([x], f"pixel shuffle of channels laid out along its spatial dims at {ctx.space.context}")
    return ctx.fixed(tuple(ctx.out_shape))


@rule(F.pixel_shuffle, torch.pixel_shuffle)
def pixel_shuffle(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    return _shuffle(ctx, ctx.tensor(args[0] if args else kwargs["input"]), int(_factor(args, kwargs, "upscale_factor")))


@rule(F.pixel_unshuffle, torch.pixel_unshuffle)
def pixel_unshuffle(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    return _unshuffle(ctx, ctx.tensor(args[0] if args else kwargs["input"]),
                      int(_factor(args, kwargs, "downscale_factor")))


@rule(nn.PixelShuffle)
def _pixel_shuffle_module(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    return _shuffle(ctx, ctx.tensor(args[0]), ctx.module.upscale_factor)


@rule(nn.PixelUnshuffle)
def _pixel_unshuffle_module(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    return _unshuffle(ctx, ctx.tensor(args[0]), ctx.module.downscale_factor)

