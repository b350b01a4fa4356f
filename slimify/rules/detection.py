"""torchvision's detection ops: RoI pooling passes channels through, boxes and scores carry none.

``roi_align(features, boxes, …)`` gives one (C, h, w) crop of ``features`` per box: its channels
are the features' channels. ``MultiScaleRoIAlign`` picks a feature level per box, so every level's
channel i is the output's channel i (FPN levels have equal widths: tied position by position).
Boxes, scores and the indices ``nms``/``batched_nms`` return are coordinates and counts, not
channels: whatever channel ids reached them keep their size (a box head's 4 coordinates, class
scores), like a classifier's logits.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from slimify.rules.base import RuleContext, TensorVal, tensors_in
from slimify.rules.elementwise import fixed_output
from slimify.rules.modules import module_rule

__all__ = ["roi_align", "multiscale_roi_align", "box_op", "function_rules"]

BOXES_REASON = "box coordinates and scores keep their size (detector outputs, like logits)"


def _fix_boxes(ctx: RuleContext, values: Any) -> None:
    ctx.fix_all([values], f"{BOXES_REASON} at {ctx.space.context}")


def _pooled(ctx: RuleContext, levels: list[TensorVal]) -> TensorVal:
    """(K, C, h, w) crops of ``levels`` (each (N, C, H, W)): channel i of every level is channel i."""
    out_shape = tuple(ctx.out_shape)
    if any(any(n > 1 for n in t.label.shape[2:]) or t.label.shape[0] > 1 for t in levels):
        ctx.fix_all(levels, f"RoI pooling of channels laid out along other dims at {ctx.space.context}")
        return ctx.fixed(out_shape)
    ids = [ctx.channel_ids(t, 1) for t in levels]
    for other in ids[1:]:
        ctx.space.union(ids[0], other)
    return TensorVal(np.asarray(ids[0]).reshape(1, -1, 1, 1), out_shape)


def roi_align(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``roi_align(input, boxes, output_size, …)`` (and ``roi_pool``, ``ps_roi_*`` share the shape)."""
    x = ctx.tensor(args[0] if args else kwargs["input"])
    _fix_boxes(ctx, args[1] if len(args) > 1 else kwargs.get("boxes"))
    return _pooled(ctx, [x])


def multiscale_roi_align(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """torchvision's fx-wrapped ``_multiscale_roi_align(x_filtered, boxes, output_size, …)``."""
    levels = [ctx.tensor(t) for t in (args[0] if args else kwargs["x_filtered"])]
    _fix_boxes(ctx, args[1] if len(args) > 1 else kwargs.get("boxes"))
    return _pooled(ctx, levels)


def box_op(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    """``nms``, ``batched_nms``, ``box_iou``, ``clip_boxes_to_image``…: no channels in or out."""
    _fix_boxes(ctx, [args, kwargs])
    return fixed_output(ctx)


@module_rule(*[cls for cls in (getattr(__import__("torchvision.ops", fromlist=["ops"]), n, None)
                               for n in ("MultiScaleRoIAlign",)) if cls is not None])
def _multiscale_module(ctx: RuleContext, m: Any, path: str, args: list, kwargs: dict) -> TensorVal:
    """``MultiScaleRoIAlign(features: dict, boxes, image_shapes)``: the levels named in
    ``featmap_names``; the rest of its forward (scales, level mapper) reads no channel sizes."""
    features = args[0] if args else kwargs["x"]
    levels = [ctx.tensor(v) for k, v in features.items() if k in m.featmap_names] \
        if isinstance(features, dict) else [t for t in tensors_in(features) if isinstance(t, TensorVal)]
    _fix_boxes(ctx, args[1:] + list(kwargs.values()))
    if not levels:
        return fixed_output(ctx)
    return _pooled(ctx, levels)


def function_rules() -> dict[Any, Any]:
    try:
        import torchvision.ops as ops
        from torchvision.ops import boxes, poolers
    except ImportError:  # torchvision is a dependency; keep the rule table importable without it
        return {}
    found: dict[Any, Any] = {ops.roi_align: roi_align, ops.roi_pool: roi_align, ops.ps_roi_align: roi_align,
                             ops.ps_roi_pool: roi_align, poolers._multiscale_roi_align: multiscale_roi_align}
    for name in ("nms", "batched_nms", "box_iou", "clip_boxes_to_image", "remove_small_boxes", "box_area",
                 "_batched_nms_coordinate_trick", "_batched_nms_vanilla"):
        target = getattr(boxes, name, None)
        if target is not None:
            found[target] = box_op
    for name, rule in (("roi_align", roi_align), ("roi_pool", roi_align), ("ps_roi_align", roi_align),
                       ("ps_roi_pool", roi_align), ("nms", box_op)):  # the ops the Python functions call
        packet = getattr(getattr(torch.ops, "torchvision", None), name, None)
        if packet is not None:
            found[packet] = found[packet.default] = rule
    return found
