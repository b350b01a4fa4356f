"""Rules for ops that move channels around: view/reshape/flatten, permute, expand, repeat."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from slimify.analysis.space import Count
from slimify.analysis.unique import unique
from slimify.rules.base import RuleContext, TensorVal
from slimify.rules.literal_sizes import (
    SizeExpr,
    attribute_candidates,
    counts_units,
    expand_sizes,
    follow_literal,
    is_dynamic,
    size_expr,
    tie_sizes,
)
from slimify.rules.registry import method, rule

__all__ = ["reshape_to", "view", "flatten", "unflatten", "permute", "transpose", "expand", "repeat",
           "repeat_interleave", "same_shape", "spatial_only", "tensor_unfold"]


def _blocks(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of source and target dims with equal products (how a reshape maps dims)."""
    blocks, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        ins, outs, pi, pj = [], [], 1, 1
        if i < len(src):
            ins.append(i); pi *= src[i]; i += 1
        if j < len(dst):
            outs.append(j); pj *= dst[j]; j += 1
        while pi != pj:
            if (pi < pj and i < len(src)) or j >= len(dst):
                ins.append(i); pi *= src[i]; i += 1
            else:
                outs.append(j); pj *= dst[j]; j += 1
        while i < len(src) and src[i] == 1 and (j >= len(dst) or dst[j] != 1):  # absorb trailing 1s
            ins.append(i); i += 1
        while j < len(dst) and dst[j] == 1 and (i >= len(src) or src[i] != 1):
            outs.append(j); j += 1
        blocks.append((ins, outs))
    return blocks


def _size_args(node: fx.Node, start: int) -> list[Any] | None:
    args = list(node.args[start:]) or list(node.kwargs.get("shape", node.kwargs.get("size", ())))
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = list(args[0])
    return expand_sizes(args, node.args[0] if node.args else None)  # computed shape tuples opened up


def reshape_to(ctx: RuleContext, x: TensorVal, out_shape: tuple[int, ...], size_args: list[Any] | None) -> TensorVal:
    """General reshape. A dim split into several (``C → heads × head_dim``) keeps one of them
    shrinking and the others rigid: each slab along the shrinking one becomes a unit. Sizes on
    channel dims must follow the width: a literal through the module attribute it came from, a
    size read from another tensor (``x.shape[-1]``) by tying that tensor's channels to these."""
    blocks = _blocks(tuple(x.shape), tuple(out_shape))
    varying = [any(x.label.shape[d] > 1 for d in ins) for ins, _ in blocks]
    expand_dims = [d for (ins, _), v in zip(blocks, varying) if v for d in ins]
    target = [1] * len(out_shape)
    for (_ins, outs), v in zip(blocks, varying):
        for o in outs:
            target[o] = out_shape[o] if v else 1
    label = np.ascontiguousarray(x.expanded(expand_dims)).reshape(target)
    rigid: set[int] = set()
    sizes = _Sizes(ctx, label, size_args, unique(x.label))
    for (ins, outs), v in zip(blocks, varying):
        if not v:
            continue
        real = [o for o in outs if out_shape[o] > 1]
        if all(d in x.rigid or x.label.shape[d] == 1 for d in ins if x.shape[d] > 1):  # no dim shrinks
            rigid.update(real)
            continue
        if len(real) > 1:
            shrink = _pick_shrinking(ctx, real, sizes)
            if shrink is None and sizes.constant_table_split(real):
                rigid.update(real)
                continue
            if shrink is None:
                ctx.space.fix(label, f"reshape splits channels into sizes baked in code at {ctx.space.context}")
                continue
            _union_slabs_in_block(ctx, label, shrink, real)
            for o in real:
                if o != shrink:
                    rigid.add(o)
                    sizes.check_rigid(o, shrink)
            real = [shrink]
        for o in real:
            sizes.check_shrinking(o)
    return TensorVal(label, tuple(out_shape), frozenset(rigid))


class _Sizes:
    """The size arguments of one reshape and the checks that keep them right at every width."""

    def __init__(self, ctx: RuleContext, label: np.ndarray, size_args: list[Any] | None, own: np.ndarray) -> None:
        self.ctx, self.label, self.args, self.own = ctx, label, size_args, own
        self._exprs: dict[int, SizeExpr | None] = {}

    def arg(self, o: int) -> Any:
        """The literal or node giving dim ``o``'s size; -1 when it comes from the tensor itself."""
        return self.args[o] if self.args is not None and o < len(self.args) else -1

    def expr(self, o: int) -> SizeExpr | None:
        if o not in self._exprs:
            self._exprs[o] = size_expr(self.ctx, self.arg(o))
        return self._exprs[o]

    def slab_ids(self, o: int) -> np.ndarray:
        return np.moveaxis(self.label, o, 0).reshape(self.label.shape[o], -1)[:, 0]

    def is_own(self, e: SizeExpr) -> bool:
        """Read from the very channels being reshaped: the element count keeps it consistent."""
        return e.ids is not None and bool(np.isin(e.ids, self.own).all())

    def check_shrinking(self, o: int) -> None:
        arg, where = self.arg(o), self.ctx.space.context
        if isinstance(arg, int) and arg == -1:
            return
        if isinstance(arg, int):
            units = _is_attribute(self.ctx, arg, True)
            if not follow_literal(self.ctx, arg, Count(self.slab_ids(o)), units=units) and not self.table_rows(o):
                self.ctx.space.fix(self.label, f"reshape to size {arg} baked in code at {where}")
            return
        e = self.expr(o)
        head = self.head_factor(o)
        if head is not None:  # ``B * self.num_heads``: the attribute follows the heads
            if not follow_literal(self.ctx, head, Count(unique(self.slab_ids(o))), units=True):
                self.ctx.space.fix(self.label, f"reshape to a size computed from {head} at {where}")
        elif e is None or e.ids is None:
            what = "computed in code" if e is None else "read from channels that never slim"
            self.ctx.space.fix(self.label, f"reshape to a size {what} at {where}")
        elif not self.is_own(e) and not tie_sizes(self.ctx, e, self.slab_ids(o)):
            self.ctx.space.fix(self.label, f"reshape to a size read from other channels at {where}")

    def constant_table_split(self, dims: list[int]) -> bool:
        """A parameter table's position dim cut into sizes that never change (a position embedding
        ``(1, N, C)`` viewed as ``(1, H, W, C)`` with H, W read from a feature map): positions are no
        channels, so every position of one channel is active with it and the dims keep their size."""
        if not self.ctx.is_table(self.label) or not all(
                (e := self.expr(o)) is not None and e.ids is None for o in dims):
            return False
        for o in dims:
            moved = np.moveaxis(self.label, o, -1)
            self.ctx.space.union(moved[..., :1], moved)
        return True

    def table_rows(self, o: int) -> bool:
        """A parameter viewed as rows of channels (``alpha.view(4, -1, 1, 1)``): the literal
        counts rows, the ``-1`` dim holds the channels."""
        return self.ctx.is_table(self.label) and any(
            p != o and self.arg(p) == -1 and self.label.shape[p] > 1 for p in range(self.label.ndim))

    def check_rigid(self, o: int, shrink: int) -> None:
        """A dim that keeps its size: a size read from slimming channels must not change."""
        e = self.expr(o) if isinstance(self.arg(o), fx.Node) else None
        if not isinstance(self.arg(o), fx.Node) or (e is not None and (e.ids is None or self.is_own(e))):
            return
        if e is not None and self.heads_ratio(o, shrink):  # C // num_heads with num_heads following
            tie_sizes(self.ctx, SizeExpr(e.value, e.ids, 1, len(e.ids) // self.label.shape[shrink]),
                      self.slab_ids(shrink), blocks=True)
            return
        self.ctx.space.fix(self.label if e is None else e.ids,
                           f"a fixed-size dim computed from slimming channels at {self.ctx.space.context}")

    def head_factor(self, o: int) -> int | None:
        """The literal ``k`` of a constant product like ``B * k`` when ``k`` is an attribute
        counting heads or groups (the other factors are batch-like)."""
        e = self.expr(o) if isinstance(self.arg(o), fx.Node) else None
        if e is None or e.ids is not None:
            return None
        found = [k for k in e.literals if _hinted_attribute(self.ctx, k)]
        return found[-1] if len(found) == 1 else None

    def heads_ratio(self, o: int, shrink: int) -> bool:
        """``size(o) == C // k`` where ``k`` is the literal size of ``shrink``, an attribute
        naming heads or groups (it follows the width, so C must follow k·size(o))."""
        e, k = self.expr(o), self.arg(shrink)
        return (e is not None and e.ids is not None and e.num == 1 and isinstance(k, int) and e.den == k
                and len(e.ids) == k * self.label.shape[o] and _hinted_attribute(self.ctx, k))


def _hinted_attribute(ctx: RuleContext, value: int) -> bool:
    return any(counts_units(n) for _, n, f in attribute_candidates(ctx, value) if f == 1)


def _pick_shrinking(ctx: RuleContext, dims: list[int], sizes: _Sizes) -> int | None:
    """Which dim of a split keeps following the width: the heads of ``C // num_heads``, else a
    size read at run time, else a literal that is a module attribute about heads/groups, else
    ``-1``, else any attribute."""
    if sizes.args is None:
        return dims[0]
    args = {d: sizes.arg(d) for d in dims}
    for d in dims:
        if isinstance(args[d], fx.Node):
            for h in reversed(dims):
                if h != d and sizes.heads_ratio(d, h):
                    return h
    for d in dims:
        if isinstance(args[d], fx.Node) and (sizes.expr(d) is None or sizes.expr(d).ids is not None):
            return d
    literal = [d for d in dims if isinstance(args[d], int) and args[d] != -1]
    clear = [d for d in literal if _is_attribute(ctx, args[d], True) and not _is_unit_size(ctx, args[d])]
    clear += [d for d in dims if sizes.head_factor(d) is not None]
    if clear:  # (3, heads, head_dim) with 3 heads: the projections' count comes first
        return max(clear)
    unclear = [d for d in literal if _is_attribute(ctx, args[d], True)]  # num_heads == head_dim
    for d in dims:
        if args[d] == -1:
            return d
    if unclear:  # heads come before head_dim
        return min(unclear)
    matching = [d for d in literal if _is_attribute(ctx, args[d], False)]
    return max(matching) if matching else None


def _sizes_a_unit(name: str) -> bool:
    """``head_dim``, ``dim_head_qk``: an attribute sizing one unit."""
    low = name.lower()
    return "head" in low and any(s in low for s in ("dim", "size"))


def _is_unit_size(ctx: RuleContext, value: int) -> bool:
    """Some attribute of this value sizes one unit."""
    return any(_sizes_a_unit(n) for _, n, f in attribute_candidates(ctx, value) if f == 1)


def _is_attribute(ctx: RuleContext, value: int, hint: bool) -> bool:
    names = [n for _, n, f in attribute_candidates(ctx, value) if f == 1]
    if hint:
        return any(counts_units(n) for n in names)
    return any(not _sizes_a_unit(n) for n in names)


def _union_slabs_in_block(ctx: RuleContext, label: np.ndarray, shrink: int, block: list[int]) -> None:
    others = [d for d in range(label.ndim) if d not in block]
    inner = [d for d in block if d != shrink]
    moved = np.transpose(label, others + [shrink] + inner)
    moved = moved.reshape(moved.shape[: len(others) + 1] + (-1,))
    ctx.space.union(moved[..., :1], moved)


@rule("view", "reshape")
def view(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    x, out_shape = ctx.tensor(args[0]), tuple(ctx.out_shape)
    raw = ctx.node.args[1] if len(ctx.node.args) == 2 else None
    if isinstance(raw, (tuple, list)) and all(isinstance(v, int) for v in raw) and attribute_candidates(ctx, raw):
        # ``x.view(self.shape)``: the whole shape is an attribute, which follows the width
        out = reshape_to(ctx, x, out_shape, None)
        counts = [Count(np.moveaxis(out.label, o, 0).reshape(out.label.shape[o], -1)[:, 0]) if out.carries(o) else v
                  for o, v in enumerate(raw)]
        if not follow_literal(ctx, raw, counts):
            ctx.space.fix(out.label, f"view to a shape baked in code at {ctx.space.context}")
        return out
    return reshape_to(ctx, x, out_shape, _size_args(ctx.node, 1))


@rule("flatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "squeeze_", "unsqueeze_")
def same_shape(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """squeeze/unsqueeze/flatten/view_as: sizes come from the tensor, so nothing is baked."""
    return reshape_to(ctx, ctx.tensor(args[0]), tuple(ctx.out_shape), None)


flatten = same_shape


@rule("unflatten")
def unflatten(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    x = ctx.tensor(args[0])
    dim = args[1] if len(args) > 1 else kwargs["dim"]
    sizes = list(ctx.node.args[2] if len(ctx.node.args) > 2 else ctx.node.kwargs["sizes"])
    dim %= x.ndim
    size_args = [-1] * dim + sizes + [-1] * (x.ndim - dim - 1)
    return reshape_to(ctx, x, tuple(ctx.out_shape), size_args)


@rule("permute")
def permute(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    x = ctx.tensor(args[0])
    dims = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
    dims = [d % x.ndim for d in (kwargs.get("dims", dims))]
    rigid = frozenset(i for i, d in enumerate(dims) if d in x.rigid)
    return TensorVal(np.transpose(x.label, dims).copy(), tuple(ctx.out_shape), rigid)


@rule("transpose", "swapaxes", "swapdims", "t")
def transpose(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    x = ctx.tensor(args[0])
    if x.ndim < 2:
        return TensorVal(x.label.copy(), tuple(ctx.out_shape), x.rigid)
    d0, d1 = (args[1] % x.ndim, args[2] % x.ndim) if len(args) > 2 else (0, 1)
    order = list(range(x.ndim))
    order[d0], order[d1] = order[d1], order[d0]
    return permute(ctx, [x, order], {})


@rule("expand", "expand_as")
def expand(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``cls_token.expand(B, -1, -1)``: new dims are not channels; a literal size on a
    channel dim must follow the width."""
    x = ctx.tensor(args[0])
    out_shape = tuple(ctx.out_shape)
    pad = len(out_shape) - x.ndim
    label = x.label.reshape((1,) * pad + x.label.shape)
    size_args = _size_args(ctx.node, 1) if ctx.node.target != "expand_as" else None
    for d in range(len(out_shape)):
        if label.shape[d] > 1 and size_args is not None and not is_dynamic(size_args[d]):
            if not follow_literal(ctx, size_args[d], Count(np.moveaxis(label, d, 0).reshape(label.shape[d], -1)[:, 0])):
                ctx.space.fix(label, f"expand to a size baked in code at {ctx.space.context}")
    rigid = frozenset(r + pad for r in x.rigid)
    return TensorVal(label.copy(), out_shape, rigid)


@rule("repeat")
def repeat(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    x = ctx.tensor(args[0])
    reps = _size_args(ctx.node, 1)
    pad = len(reps) - x.ndim
    label = x.label.reshape((1,) * pad + x.label.shape)
    if any(isinstance(r, fx.Node) and label.shape[d] > 1 for d, r in enumerate(reps)):
        ctx.fix_all([x], f"repeat of channels with computed counts at {ctx.space.context}")
        return ctx.fixed(tuple(ctx.out_shape))
    tiles = [r if label.shape[d] > 1 else 1 for d, r in enumerate(args[1:] if len(args) > 2 or isinstance(args[1], int)
                                                                  else args[1])]
    return TensorVal(np.tile(label, tiles), tuple(ctx.out_shape), frozenset(r + pad for r in x.rigid))


@rule("repeat_interleave")
def repeat_interleave(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``x.repeat_interleave(r, dim)``: each entry repeated ``r`` times in place (a batch of
    windows sharing one global query); along channels every copy keeps its channel's id."""
    x = ctx.tensor(args[0])
    reps = args[1] if len(args) > 1 else kwargs.get("repeats")
    dim = args[2] if len(args) > 2 else kwargs.get("dim")
    if dim is None or not isinstance(reps, int):
        if dim is None or x.label.shape[dim % x.ndim] > 1:
            ctx.fix_all([x], f"repeat_interleave over channels at {ctx.space.context}")
            return ctx.fixed(tuple(ctx.out_shape))
        return TensorVal(x.label.copy(), tuple(ctx.out_shape), x.rigid)
    label = np.repeat(x.label, reps, axis=dim % x.ndim) if x.label.shape[dim % x.ndim] > 1 else x.label
    return TensorVal(label.copy(), tuple(ctx.out_shape), x.rigid)


@rule("roll", "flip")
def spatial_only(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``roll``/``flip`` (Swin's shifted windows): positions move along the given dims; along
    channels that would reorder channels, which a prefix cannot follow."""
    x = ctx.tensor(args[0])
    dims = kwargs.get("dims", args[2] if ctx.node.target in ("roll", torch.roll) and len(args) > 2
                      else args[1] if len(args) > 1 else None)
    dims = [dims] if isinstance(dims, int) else dims
    if dims is None or any(x.carries(d % x.ndim) for d in dims):
        ctx.fix_all([x], f"channels moved by {getattr(ctx.node.target, '__name__', ctx.node.target)} at {ctx.space.context}")
        return ctx.fixed(tuple(ctx.out_shape))
    return TensorVal(x.label.copy(), tuple(ctx.out_shape), x.rigid)


@rule(torch.Tensor.unfold, method("unfold"))  # not F.unfold (rules/windows.py)
def tensor_unfold(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``x.unfold(dim, size, step)`` (HaloNet's overlapping windows): windows along a spatial
    dim, the window as a new last dim; along channels it would cut channels into windows."""
    x = ctx.tensor(args[0])
    dim = (args[1] if len(args) > 1 else kwargs["dimension"]) % x.ndim
    if x.carries(dim):
        ctx.fix_all([x], f"unfold along channels at {ctx.space.context}")
        return ctx.fixed(tuple(ctx.out_shape))
    label = x.label[(slice(None),) * dim + (slice(0, 1),)] if x.label.shape[dim] > 1 else x.label
    return TensorVal(np.expand_dims(label, -1).copy(), tuple(ctx.out_shape), x.rigid)
