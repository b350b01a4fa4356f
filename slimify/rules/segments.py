"""Rules for ops that join or cut the channel dim: cat, stack, split/chunk/unbind, indexing, pad."""
from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from slimify.analysis.shape_pass import SHAPE_KEY
from slimify.analysis.space import Count
from slimify.rules.base import ParamVal, RuleContext, TensorVal
from slimify.rules.elementwise import fixed_output
from slimify.rules.literal_sizes import SizeExpr, follow_literal, size_expr, subtracted_from_size, tie_sizes
from slimify.rules.registry import method, rule

__all__ = ["cat", "stack", "split", "chunk", "tensor_split", "unbind", "getitem", "pad"]


def _dim(args: list, kwargs: dict, pos: int, default: int = 0) -> int:
    return kwargs.get("dim", args[pos] if len(args) > pos else default)


@rule("cat", "concat", "concatenate")
def cat(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """Concatenation: along the cat dim the segments follow each other (a consumer of a
    DenseNet concat indexes every segment's active channels); other dims must match."""
    parts = [ctx.tensor(t) for t in (args[0] if args else kwargs["tensors"])]
    out_shape = tuple(ctx.out_shape)
    d = _dim(args, kwargs, 1) % len(out_shape)
    reps = [np.take(p.label, [0], axis=d) for p in parts]
    structured = []  # parts whose ids vary along other dims: those dims must line up
    for p, r in zip(parts, reps):
        if any(s > 1 for o, s in enumerate(p.label.shape) if o != d):
            if p.label.shape[d] > 1:
                moved = np.moveaxis(p.label, d, -1)
                ctx.space.union(moved[..., :1], moved)
            structured.append(r)
    if structured:  # a part of fixed channels (xcit's stream) keeps the others' at full size too
        structured += [r for p, r in zip(parts, reps) if not any(s > 1 for o, s in enumerate(p.label.shape) if o != d)]
    for r in structured[1:]:
        ctx.space.union(structured[0], r)
    joint = list(np.broadcast_shapes(*(r.shape for r in reps)))
    rigid = _joint_rigid(parts)
    if not any(p.label.shape[d] > 1 for p in parts):
        return TensorVal(np.broadcast_to(reps[0], joint).copy(), out_shape, rigid)
    pieces = []
    for p in parts:
        shape = joint.copy()
        shape[d] = p.shape[d]
        pieces.append(np.broadcast_to(p.expanded([d]) if p.label.shape[d] == 1 else p.label, shape))
    return TensorVal(np.concatenate(pieces, axis=d), out_shape, rigid)


def _joint_rigid(parts: list[TensorVal]) -> frozenset[int]:
    """Dims rigid in the concatenation: rigid in every part that carries ids along them (MViT's
    class token, whose head_dim varies, joined with pooled tokens whose head_dim is one label)."""
    return frozenset(r for r in frozenset.union(*(p.rigid for p in parts))
                     if all(r in p.rigid or p.label.shape[r] == 1 for p in parts))


@rule("stack")
def stack(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    parts = [ctx.tensor(t) for t in args[0]]
    d = _dim(args, kwargs, 1) % len(ctx.out_shape)
    for p in parts[1:]:
        ctx.space.union(parts[0].label, p.label)
    label = np.expand_dims(np.broadcast_to(parts[0].label, np.broadcast_shapes(*(p.label.shape for p in parts))), d)
    return TensorVal(label.copy(), tuple(ctx.out_shape), frozenset(r + (r >= d) for r in parts[0].rigid))


def _segments(ctx: RuleContext, x: TensorVal, d: int, sizes: list[int], keepdim: bool = True) -> list[TensorVal]:
    label = x.expanded([d]) if x.label.shape[d] > 1 else x.label
    outs, start = [], 0
    for shape, size in zip(ctx.out_shape, sizes):
        piece = label[(slice(None),) * d + (slice(start, start + size),)] if label.shape[d] > 1 else label
        if not keepdim:
            piece = piece.squeeze(d) if piece.shape[d] == 1 else piece
        outs.append(TensorVal(np.ascontiguousarray(piece), tuple(shape), x.rigid))
        start += size
    return outs


def _split_channels(ctx: RuleContext, x: TensorVal, d: int, sizes: list[int], literal: Any,
                    tensor: Any = None) -> None:
    """Cut a channel dim into segments. Equal segments that must stay equal at run time
    (``chunk``, an int split size) must keep equal widths (checked by the plan); a literal size list
    (MixNet's ``self.splits``) follows the width through its module attribute."""
    ids = ctx.channel_ids(x, d)
    bounds = np.cumsum([0] + sizes)
    ctx.space.cut(ids[bounds[1:-1] - 1], ids[bounds[1:-1]])
    segs = [ids[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if literal is None and len(set(sizes[:-1])) == 1 and sizes[-1] < sizes[0]:
        _chunk_with_short_tail(ctx, segs)
    elif literal is None or isinstance(literal, int):
        if len(set(sizes)) != 1:
            ctx.space.fix(ids, f"split into unequal pieces at {ctx.space.context}")
            return
        ctx.space.balance(segs)
        if isinstance(literal, int) and not follow_literal(ctx, literal, Count(segs[0])):
            ctx.space.fix(ids, f"split size {literal} baked in code at {ctx.space.context}")
    elif any(isinstance(v, fx.Node) for v in literal):
        _follow_each_size(ctx, list(literal), segs, tensor, d, len(x.shape))
    elif not follow_literal(ctx, list(literal), [Count(s) for s in segs]):
        ctx.space.fix(ids, f"split sizes {list(literal)} baked in code at {ctx.space.context}")


def _follow_each_size(ctx: RuleContext, sizes: list[Any], segs: list[np.ndarray], tensor: Any = None, d: int = 0,
                      ndim: int = 0) -> None:
    """Split sizes mixing computed and literal ones (FocalNet's ``split(x, (C, C, self.focal_level
    + 1), 1)`` with ``C`` read from the block input): a size read from slimming channels ties its
    piece to them, any other piece keeps its size (a literal beside computed sizes is a count of
    its own: ``focal_level + 1`` gates). The rest of the input (RAFT's ``split(context, [hidden,
    context.shape[1] - hidden])``) needs no tie: it is whatever the other pieces leave, and the
    literal it subtracts is the width of the other piece, which follows the attribute holding it
    (the model's own or a submodule's: ``self.update_block.hidden_state_size``)."""
    rest = {i: subtracted_from_size(s, tensor, d, ndim) for i, s in enumerate(sizes)} if ndim else {}
    rest = {i: k for i, k in rest.items() if k is not None
            and k == sum(s for j, s in enumerate(sizes) if j != i and type(s) is int)
            and all(type(s) is int for j, s in enumerate(sizes) if j != i)}
    for i, (size, seg) in enumerate(zip(sizes, segs)):
        if i in rest or (rest and type(size) is int and follow_literal(ctx, size, Count(seg), nested=True)):
            continue
        expr = size_expr(ctx, size) if isinstance(size, fx.Node) else None
        if expr is None or expr.ids is None or not tie_sizes(ctx, expr, seg):
            ctx.space.fix(seg, f"split size {size} computed or baked in code at {ctx.space.context}")


def _chunk_with_short_tail(ctx: RuleContext, segs: list[np.ndarray]) -> None:
    """``chunk(n)`` of C channels gives pieces of ``ceil(C/n)`` and a shorter last one (EdgeNeXt's
    88 → 30, 30, 28). Tying position j of every piece that has it keeps the same split at every
    width: with k positions active the pieces hold k, …, k, min(k, last) = what chunk computes."""
    tail = len(segs[-1])
    common = np.stack([s[:tail] for s in segs])
    ctx.space.union(common[:1], common)
    extra = np.stack([s[tail:] for s in segs[:-1]])
    ctx.space.union(extra[:1], extra)


@rule("split", "split_with_sizes")
def split(ctx: RuleContext, args: list, kwargs: dict) -> list[TensorVal]:
    x = ctx.tensor(args[0])
    d = _dim(args, kwargs, 2) % x.ndim
    sizes = [s[d] for s in ctx.out_shape]
    raw = ctx.node.args[1] if len(ctx.node.args) > 1 else ctx.node.kwargs.get("split_size_or_sections",
                                                                                ctx.node.kwargs.get("split_size"))
    if x.carries(d):
        literal = None if isinstance(raw, fx.Node) else raw
        _split_channels(ctx, x, d, sizes, literal, ctx.node.args[0] if ctx.node.args else None)
    return _segments(ctx, x, d, sizes)


@rule("chunk")
def chunk(ctx: RuleContext, args: list, kwargs: dict) -> list[TensorVal]:
    x = ctx.tensor(args[0])
    d = _dim(args, kwargs, 2) % x.ndim
    sizes = [s[d] for s in ctx.out_shape]
    if x.carries(d):
        if ctx.space.positional_chunks and len(set(sizes)) == 1 and len(sizes) > 1 and not x.rigid:
            return _chunk_by_position(ctx, x, d, sizes)
        _split_channels(ctx, x, d, sizes, None)
    return _segments(ctx, x, d, sizes)


@rule("tensor_split")
def tensor_split(ctx: RuleContext, args: list, kwargs: dict) -> list[TensorVal]:
    """``torch.tensor_split(x, sections_or_indices, dim)`` (MViT's class token: ``tensor_split(x,
    indices=(1,), dim=2)``). Along other dims channels pass through; along channels an int counts
    pieces like ``chunk``, and a list of indices cuts where slice bounds would (``x[:, :i]``), each
    index following the width through the attribute holding it."""
    x = ctx.tensor(args[0])
    d = _dim(args, kwargs, 2) % x.ndim
    sizes = [s[d] for s in ctx.out_shape]
    if x.carries(d):
        raw = ctx.node.args[1] if len(ctx.node.args) > 1 else next(
            (ctx.node.kwargs[k] for k in ("sections", "indices", "tensor_indices_or_sections") if k in ctx.node.kwargs),
            None)
        if isinstance(raw, int):
            _split_channels(ctx, x, d, sizes, None)
        elif isinstance(raw, (list, tuple)) and all(isinstance(i, int) for i in raw):
            _cut_at_indices(ctx, x, d, sizes)
        else:
            ctx.space.fix(ctx.channel_ids(x, d), f"tensor_split at indices computed in code at {ctx.space.context}")
    return _segments(ctx, x, d, sizes)


def _cut_at_indices(ctx: RuleContext, x: TensorVal, d: int, sizes: list[int]) -> None:
    """Pieces ``x[:i1], x[i1:i2], …``: each inner index is the bound of a prefix, which follows the
    width through its attribute like ``x[:, :i]`` (else the channels keep their size)."""
    ids = ctx.channel_ids(x, d)
    for bound in np.cumsum(sizes)[:-1].tolist():
        if not 0 < bound < len(ids):
            continue
        ctx.space.cut(ids[bound - 1:bound], ids[bound:bound + 1])
        if not follow_literal(ctx, bound, Count(ids[:bound])):
            ctx.space.fix(ids, f"tensor_split index {bound} baked in code at {ctx.space.context}")
            return


def _chunk_by_position(ctx: RuleContext, x: TensorVal, d: int, sizes: list[int]) -> list[TensorVal]:
    """``chunk(n)`` as the narrow model computes it: piece i is the i-th n-th of whatever is
    active, so each piece's channels are new ones (fresh ids, a prefix active) and only counts tie
    the two sides: the pieces keep equal widths that add up to the input's.

    At full width this is the same chunk. Narrower, piece i's channel j is not the channel j of
    the full piece i: the narrow model is a slimmable network, not a masked copy of the full one.
    That frees ShuffleNetV2, whose channel shuffle followed by ``chunk(2)`` otherwise ties channels
    into units that double every block. Used only when the identity-keeping split cannot slim (see
    ``slimify.analysis.stages.analyze_model``); if the counts cannot match, the plan ties the pieces to the
    input position by position, which is the identity-keeping split again."""
    ids = ctx.channel_ids(x, d)
    pieces = [ctx.space.new_var(size, f"chunk {i} of {ctx.space.context}") for i, size in enumerate(sizes)]
    ctx.space.balance(pieces)
    ctx.space.balance([ids, np.concatenate(pieces)])
    ctx.space.keep_order(np.concatenate([ids, *pieces]), f"chunk by position at {ctx.space.context}")
    return [ctx.with_dim(x, d, p, tuple(shape)) for p, shape in zip(pieces, ctx.out_shape)]


@rule("unbind")
def unbind(ctx: RuleContext, args: list, kwargs: dict) -> list[TensorVal]:
    x = ctx.tensor(args[0])
    d = _dim(args, kwargs, 1) % x.ndim
    if x.carries(d):
        ctx.space.fix(x.label, f"unbind along channels at {ctx.space.context}")
    outs = _segments(ctx, x, d, [1] * x.shape[d], keepdim=False)
    rigid = frozenset(r - (r > d) for r in x.rigid if r != d)
    return [TensorVal(o.label, o.shape, rigid) for o in outs]


@rule("pad")
def pad(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """Padding space passes channels through. Constant padding of a channel dim (EfficientViT's
    extra row of ones) adds channels that never slim before or after the ones that do."""
    from slimify.rules.elementwise import passthrough
    x = ctx.tensor(args[0])
    widths = list(args[1] if len(args) > 1 else kwargs["pad"])
    mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
    padded = {x.ndim - 1 - i // 2 for i, w in enumerate(widths) if w}
    channel_dims = [d for d in padded if x.label.shape[d] > 1]
    if not channel_dims:
        return passthrough(ctx, [x], {})
    if mode != "constant" or len(channel_dims) > 1 or any(isinstance(w, fx.Node) for w in widths):
        ctx.fix_all([x], f"padding along channels at {ctx.space.context}")
        return ctx.fixed(tuple(ctx.out_shape))
    d = channel_dims[0]
    before, after = widths[2 * (x.ndim - 1 - d)], widths[2 * (x.ndim - 1 - d) + 1]
    label = x.label
    if d in x.rigid:  # inside a unit (a head's channels): the padded entries come and go with it
        take = [0] * before + list(range(label.shape[d])) + [label.shape[d] - 1] * after
        return TensorVal(np.take(label, take, axis=d), tuple(ctx.out_shape), x.rigid)
    shape = list(label.shape)
    shape[d] = 1
    zeros = np.zeros(shape, np.int64)
    parts = [np.repeat(zeros, before, axis=d), label, np.repeat(zeros, after, axis=d)]
    return TensorVal(np.concatenate(parts, axis=d), tuple(ctx.out_shape), x.rigid)


@rule("getitem", operator.getitem, method("__getitem__"))
def getitem(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    """``x[:, :n]``, ``x[..., 0]``, ``table[index]``: slices of channel dims follow the width
    through the attribute holding ``n``; constant picks fix what they pick. An item of a list,
    tuple or dict (``outs[0]``, ``features["0"]``) is that item."""
    if not isinstance(args[0], (TensorVal, ParamVal)):
        return args[0][args[1]] if isinstance(args[0], (list, tuple, dict)) else fixed_output(ctx)
    x = ctx.tensor(args[0])
    raw = ctx.node.args[1]
    index = list(raw) if isinstance(raw, tuple) else [raw]
    if any(i is Ellipsis for i in index):
        at = index.index(Ellipsis)
        used = sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:at] + [slice(None)] * (x.ndim - used) + index[at + 1:]
    label, dim, rigid = x.label, 0, set()
    tensor_indices = [i for i in index if isinstance(i, fx.Node)]
    if len(tensor_indices) > 1:
        ctx.fix_all([x], f"advanced indexing with several index tensors at {ctx.space.context}")
        return ctx.fixed(tuple(ctx.out_shape))
    orig = 0  # dim of x that ``item`` indexes
    for item in index:
        if item is None:
            label = np.expand_dims(label, dim)
            dim += 1
            continue
        varies = label.shape[dim] > 1
        carries = varies and orig not in x.rigid
        if isinstance(item, int):
            if carries and not ctx.is_table(label):  # a parameter's row (EfficientViM's alpha[0]) stays
                picked = np.take(label, [item], axis=dim)
                ctx.space.fix(picked if item >= 0 else label, f"channel picked by a constant at {ctx.space.context}")
            label = np.take(label, item if varies else 0, axis=dim)
        elif isinstance(item, slice):
            item, computed = _computed_bounds(ctx, item)
            if varies:
                label = _slice_dim(ctx, label, dim, item, carries, computed)
            if orig in x.rigid:
                rigid.add(dim)
            dim += 1
        elif isinstance(item, fx.Node):  # gather along dim: it must never shrink
            index_shape = item.meta.get(SHAPE_KEY)
            if varies:
                moved = np.moveaxis(label, dim, -1)
                ctx.space.union(moved[..., :1], moved)
            label = np.take(label, [0], axis=dim)
            idx_ndim = len(index_shape) if isinstance(index_shape, torch.Size) else 1
            label = label.reshape(label.shape[:dim] + (1,) * idx_ndim + label.shape[dim + 1:])
            dim += idx_ndim
        else:
            ctx.fix_all([x], f"indexing with {type(item).__name__} at {ctx.space.context}")
            return ctx.fixed(tuple(ctx.out_shape))
        orig += 1
    out_shape = tuple(ctx.out_shape)
    if label.ndim != len(out_shape):
        label = label.reshape([s if s > 1 else 1 for s in label.shape][: len(out_shape)] or [1] * len(out_shape))
    return TensorVal(np.ascontiguousarray(label), out_shape, frozenset(rigid))


def _from_end(ids: np.ndarray, bound: Any) -> Any:
    """``x[:, :-1]`` where the last channels never slim (a padded row): the bound counts from
    the end at every width, which is the same as this bound from the start; else unchanged."""
    if isinstance(bound, int) and bound < 0 and -bound <= len(ids) and (ids[bound:] == 0).all():
        return len(ids) + bound
    return bound


def _computed_bounds(ctx: RuleContext, item: slice) -> tuple[slice, dict[str, SizeExpr | None]]:
    """``x[:, :n]`` with ``n`` computed in forward code (``n = y.shape[1]``): the slice with the
    bounds' values, and for each computed bound where its size comes from (None: unknown)."""
    computed: dict[str, SizeExpr | None] = {}
    bounds = {}
    for which in ("start", "stop", "step"):
        bound = getattr(item, which)
        if isinstance(bound, fx.Node):
            computed[which] = size_expr(ctx, bound)
            bound = ctx.values.get(bound)
        bounds[which] = bound
    return slice(bounds["start"], bounds["stop"], bounds["step"]), computed


def _slice_dim(ctx: RuleContext, label: np.ndarray, dim: int, item: slice, carries: bool,
               computed: dict[str, SizeExpr | None] | None = None) -> np.ndarray:
    size = label.shape[dim]
    ids = np.moveaxis(label, dim, 0).reshape(size, -1)[:, 0]
    start, stop, step = item.start, item.stop, item.step
    computed = computed or {}
    if carries:
        tail = [b for b in (start, stop) if _from_end(ids, b) is not b]  # counted from a fixed tail
        start, stop = (_from_end(ids, b) for b in (start, stop))
        if (step not in (None, 1)) or any(isinstance(b, int) and b < 0 for b in (start, stop)):
            ctx.space.fix(label, f"strided or negative slice of channels at {ctx.space.context}")
        for which, bound in (("start", start), ("stop", stop)):
            if (tail and bound == size + tail[0]) or not isinstance(bound, int) or not 0 < bound <= size:
                continue
            if bound < size:
                ctx.space.cut(ids[bound - 1:bound], ids[bound:bound + 1])
            source = computed.get(which)
            if which in computed and (source is None or source.ids is not None):  # read at run time
                if source is None or not tie_sizes(ctx, source, ids[:bound]):  # ... from another width: a count tie
                    ctx.space.fix(label, f"slice bound computed at run time at {ctx.space.context}")
            elif bound < size and not follow_literal(ctx, bound, Count(ids[:bound])):  # a literal or constants
                ctx.space.fix(label, f"slice bound {bound} baked in code at {ctx.space.context}")
    return label[(slice(None),) * dim + (slice(start, stop, step),)]

