"""torchvision's MViT helpers, wrapped as fx leaves (``torch.fx.wrap``) in
``torchvision.models.video.mvit``: ``_unsqueeze``/``_squeeze`` add or drop a dim when the input
lacks it (returning the original rank), ``_add_shortcut`` adds the residual in place (all tokens,
or all but the class token), ``_add_rel_pos`` adds decomposed relative positions to the
attention logits (tables shared by every head, indexed by each head's channels)."""
from __future__ import annotations

from slimify.rules.attention import decomposed_rel_pos
from slimify.rules.base import RuleContext, TensorVal
from slimify.rules.elementwise import elementwise
from slimify.rules.linalg import with_shape
from slimify.rules.registry import rule
from slimify.rules.reshape import reshape_to

MVIT = "torchvision.models.video.mvit"

__all__ = ["unsqueeze", "squeeze", "add_shortcut", "add_rel_pos"]


@rule(f"{MVIT}:_unsqueeze")
def unsqueeze(ctx: RuleContext, args: list, kwargs: dict) -> tuple[TensorVal, int]:
    """``_unsqueeze(x, target_dim, expand_dim) -> (x, x.dim() before)``."""
    x = ctx.tensor(args[0])
    out_shape = ctx.out_shape[0]
    moved = with_shape(ctx, out_shape, lambda: reshape_to(ctx, x, tuple(out_shape), None))
    return moved, x.ndim


@rule(f"{MVIT}:_squeeze")
def squeeze(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``_squeeze(x, target_dim, expand_dim, tensor_dim)``: the inverse of ``_unsqueeze``."""
    return reshape_to(ctx, ctx.tensor(args[0]), tuple(ctx.out_shape), None)


@rule(f"{MVIT}:_add_shortcut")
def add_shortcut(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``_add_shortcut(x, shortcut, with_cls)``: ``x + shortcut`` (class token skipped or not:
    the channels meet either way)."""
    return elementwise(ctx, [args[0], args[1]], {})


@rule(f"{MVIT}:_add_rel_pos")
def add_rel_pos(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``_add_rel_pos(attn, q, q_thw, k_thw, rel_pos_h, rel_pos_w, rel_pos_t)``: as timm's
    decomposed relative positions, with a third (time) table."""
    attn, q, tables = args[0], args[1], list(args[4:7])
    result = decomposed_rel_pos(ctx, [attn, q, None, None, None, tables[0], tables[1]], {})
    decomposed_rel_pos(ctx, [attn, q, None, None, None, tables[2], tables[2]], {})
    return result

