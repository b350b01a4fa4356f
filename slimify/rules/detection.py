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
from slimify.rules.registry import rule

__all__ = ["roi_align", "multiscale_roi_align", "box_op", "POSTPROCESSING", "postprocessing_functions"]

OPS = "torchvision.ops"
BOX_OPS = ("nms", "batched_nms", "box_iou", "clip_boxes_to_image", "remove_small_boxes", "box_area",
           "_batched_nms_coordinate_trick", "_batched_nms_vanilla")
BOXES_REASON = "box coordinates and scores keep their size (detector outputs, like logits)"
# post-processing of detections whose Python code branches on box values (``max(box[0], 0)``): a leaf
# of the concrete trace, run for its value; like the box ops, no channels in or out
POSTPROCESSING = ("torchvision.models.detection.roi_heads:paste_masks_in_image",)


def postprocessing_functions() -> list[Any]:
    """The functions of ``POSTPROCESSING`` that are installed (traced as leaves, ``rules/notrace.py``)."""
    import importlib
    found = []
    for key in POSTPROCESSING:
        module_name, _, name = key.partition(":")
        try:
            found.append(getattr(importlib.import_module(module_name), name))
        except (ImportError, AttributeError):
            continue
    return found


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


@rule(*[f"{OPS}:{n}" for n in ("roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool")])
def roi_align(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``roi_align(input, boxes, output_size, …)`` (and ``roi_pool``, ``ps_roi_*`` share the shape)."""
    x = ctx.tensor(args[0] if args else kwargs["input"])
    _fix_boxes(ctx, args[1] if len(args) > 1 else kwargs.get("boxes"))
    return _pooled(ctx, [x])


@rule(f"{OPS}.poolers:_multiscale_roi_align")
def multiscale_roi_align(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """torchvision's fx-wrapped ``_multiscale_roi_align(x_filtered, boxes, output_size, …)``."""
    levels = [ctx.tensor(t) for t in (args[0] if args else kwargs["x_filtered"])]
    _fix_boxes(ctx, args[1] if len(args) > 1 else kwargs.get("boxes"))
    return _pooled(ctx, levels)


@rule(*[f"{OPS}.boxes:{n}" for n in BOX_OPS], *POSTPROCESSING)
def box_op(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    """``nms``, ``batched_nms``, ``box_iou``, ``clip_boxes_to_image``…: no channels in or out."""
    _fix_boxes(ctx, [args, kwargs])
    return fixed_output(ctx)


def _multiscale_classes() -> tuple[type, ...]:
    try:
        from torchvision.ops import MultiScaleRoIAlign
    except ImportError:  # torchvision is a dependency; keep the rule table importable without it
        return ()
    return (MultiScaleRoIAlign,)


@rule(*_multiscale_classes())
def _multiscale_module(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``MultiScaleRoIAlign(features: dict, boxes, image_shapes)``: the levels named in
    ``featmap_names``; the rest of its forward (scales, level mapper) reads no channel sizes."""
    m = ctx.module
    features = args[0] if args else kwargs["x"]
    levels = [ctx.tensor(v) for k, v in features.items() if k in m.featmap_names] \
        if isinstance(features, dict) else [t for t in tensors_in(features) if isinstance(t, TensorVal)]
    _fix_boxes(ctx, args[1:] + list(kwargs.values()))
    if not levels:
        return fixed_output(ctx)
    return _pooled(ctx, levels)


def _register_dispatcher_ops() -> None:
    """The ``torch.ops.torchvision`` ops the Python functions call (and their ``.default``)."""
    for name, fn in (("roi_align", roi_align), ("roi_pool", roi_align), ("ps_roi_align", roi_align),
                     ("ps_roi_pool", roi_align), ("nms", box_op)):
        packet = getattr(getattr(torch.ops, "torchvision", None), name, None)
        if packet is not None:
            rule(packet, packet.default)(fn)


_register_dispatcher_ops()
