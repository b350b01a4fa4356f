"""Sizes baked into forward code: find the module attribute a literal came from, so it can
follow the width, or fix the channels with a reason naming the line of code."""
from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.fx as fx

from slimify.analysis.shape_pass import VALUE_KEY
from slimify.analysis.space import Count, SizeCondition
from slimify.rules.base import ParamVal, RuleContext, TensorVal

__all__ = ["keep_compared_size", "expand_sizes", "is_dynamic", "follow_literal", "counts_units", "attribute_candidates",
           "register_attr", "SizeExpr", "size_expr", "tie_sizes", "nested_candidates", "subtracted_from_size"]

WIDTH_ATTR_HINTS = ("head", "group", "chs", "channels", "dim", "width", "split", "features", "hidden")


def is_dynamic(arg: Any) -> bool:
    """A size computed at run time (from ``x.shape``) or ``-1``: it follows the width by itself."""
    return isinstance(arg, fx.Node) or arg == -1


def expand_sizes(args: list[Any], tensor: Any) -> list[Any]:
    """Size arguments with computed shape tuples opened up, so their literals can follow the
    width like written ones: ``x.view(x.size()[:-2] + (self.all_head_size,))`` and
    ``new_shape = x.size()[:-1] + (self.num_heads, self.head_size); x.view(*new_shape)`` give
    ``[-1, -1, all_head_size]`` (entries read from ``tensor`` at their own position come from
    the tensor itself, like ``-1``). An entry that cannot be told stays the node it is."""
    if len(args) == 1 and isinstance(args[0], fx.Node):
        entries = _tuple_entries(args[0], tensor)
        if entries is not None:
            return entries
    return [_entry(a, tensor) for a in args]


def _entry(arg: Any, tensor: Any) -> Any:
    """``new_shape[i]`` of a computed tuple: the entry itself."""
    if isinstance(arg, fx.Node) and arg.op == "call_function" and arg.target is operator.getitem \
            and isinstance(arg.args[1], int):
        entries = _tuple_entries(arg.args[0], tensor)
        if entries is not None and -len(entries) <= arg.args[1] < len(entries):
            entry = entries[arg.args[1]]
            # a dim of another tensor's shape slice stays the read itself (``B, N, C = x.shape[:3]``)
            return arg if entry is arg.args[0] else entry
    return arg


def _tuple_entries(value: Any, tensor: Any, offset: int = 0) -> list[Any] | None:
    """The entries of a shape tuple built by ``+`` from literal tuples and slices of
    ``tensor.size()`` / ``tensor.shape``; None when it is built some other way."""
    if isinstance(value, (tuple, list)):
        return list(value)
    if not isinstance(value, fx.Node) or value.op != "call_function":
        return None
    if value.target is operator.add and len(value.args) == 2:
        left = _tuple_entries(value.args[0], tensor, offset)
        right = None if left is None else _tuple_entries(value.args[1], tensor, offset + len(left))
        return None if right is None else left + right
    if value.target is operator.getitem and isinstance(value.args[1], slice) and isinstance(value.args[0], fx.Node):
        base = value.args[0]
        whole = base.meta.get(VALUE_KEY)
        reads = (base.op == "call_method" and base.target == "size" and len(base.args) == 1) or (
            base.op == "call_function" and base.target is getattr and base.args[1:] == ("shape",))
        if not reads or not isinstance(whole, (tuple, list)):
            return None
        dims = range(len(whole))[value.args[1]]
        # a dim read from the tensor being reshaped, kept at its place, is that tensor's own size
        return [-1 if base.args[0] is tensor and d == offset + i else value for i, d in enumerate(dims)]
    return None


def attribute_candidates(ctx: RuleContext, value: Any) -> list[tuple[str, str, int]]:
    """(module path, attribute, factor) with ``attribute == value * factor`` in the module
    whose forward code made this node (an outer module's attribute of the same value is a
    coincidence more often than the source: ``Scale.shape`` vs its block's ``dim``)."""
    found = []
    owner = ctx.owner_paths()[0]
    paths = [owner]
    if isinstance(value, (list, tuple)):  # a whole shape is strong evidence: also a child's (rel_pos.bias_shape)
        try:
            module = ctx.root.get_submodule(owner) if owner else ctx.root
            paths += [f"{owner}.{n}" if owner else n for n, _ in module.named_children()]
        except AttributeError:
            pass
    for path in paths:
        try:
            module = ctx.root.get_submodule(path) if path else ctx.root
        except AttributeError:
            continue
        for name, attr in vars(module).items():
            if name.startswith("_") or isinstance(attr, bool):
                continue
            if isinstance(value, int) and isinstance(attr, int):
                for factor in (1, 2, 3, 4):
                    if attr == value * factor:
                        found.append((path, name, factor))
            elif isinstance(value, (list, tuple)) and isinstance(attr, (list, tuple)) and list(attr) == list(value):
                found.append((path, name, 1))
        if found:
            return found
    return found


def nested_candidates(ctx: RuleContext, value: int) -> list[tuple[str, str, int]]:
    """(module path, attribute, 1) for a literal read from a submodule's attribute
    (``self.update_block.hidden_state_size``, RAFT's split of the context features). Only the
    model's own container modules count (no parameters of their own; torch layers' sizes are
    their rules' business), with names that speak of widths and exactly the value."""
    owner = ctx.owner_paths()[0]
    try:
        module = ctx.root.get_submodule(owner) if owner else ctx.root
    except AttributeError:
        return []
    found = []
    for path, sub in module.named_modules(prefix=owner):
        if path == owner or type(sub).__module__.split(".")[0] == "torch" or next(sub.parameters(False), None) is not None:
            continue
        found += [(path, name, 1) for name, attr in vars(sub).items()
                  if not name.startswith("_") and type(attr) is int and attr == value
                  and any(h in name.lower() for h in WIDTH_ATTR_HINTS)]
    return found


def subtracted_from_size(node: Any, tensor: fx.Node, dim: int, ndim: int) -> int | None:
    """``k`` when ``node`` is ``tensor.shape[dim] - k`` with a literal ``k`` (the rest of a
    split: ``split(x, [k, x.shape[1] - k])``), else None."""
    if not isinstance(node, fx.Node) or node.op != "call_function" or node.target is not operator.sub:
        return None
    read = _shape_read(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    k = node.args[1]
    if read is None or read[0] is not tensor or read[1] % ndim != dim % ndim or type(k) is not int:
        return None
    return k


def counts_units(name: str) -> bool:
    """``num_heads``, ``groups``: an attribute counting heads or groups (not ``head_dim``)."""
    low = name.lower()
    return any(h in low for h in ("head", "group")) and not any(s in low for s in ("dim", "size", "ch", "width"))


def follow_literal(ctx: RuleContext, value: Any, counts: Any, prefer_hint: bool = True, units: bool = False,
                   nested: bool = False) -> bool:
    """Make the attribute that holds the literal ``value`` follow ``counts`` (a Count or a
    list of Counts with the same structure as ``value``). A list with no attribute of its own
    (``[self.dim_conv3, self.dim_untouched]``) follows through one attribute per entry; with
    ``nested``, an int no attribute of the module holds may be a submodule's
    (``nested_candidates``). Returns False when no attribute is found: the caller then fixes
    the channels."""
    candidates = attribute_candidates(ctx, value)
    if not candidates and nested and type(value) is int:
        candidates = nested_candidates(ctx, value)
    shapes = _shape_holders(ctx, value) if type(value) is int and isinstance(counts, Count) else []
    for path, name, attr, at in shapes:  # also where a stored shape holds it (``[B] + self.proj_view_shape``)
        register_attr(ctx, path, name, type(attr)(counts if i == at else v for i, v in enumerate(attr)))
    if not candidates and shapes:
        return True
    if not candidates:
        if isinstance(value, (list, tuple)) and not isinstance(counts, Count) and len(value) == len(counts):
            return _follow_entries(ctx, list(value), list(counts), prefer_hint)
        return False
    exact = [c for c in candidates if c[2] == 1] or candidates
    if len(exact) > 1:  # num_heads == dim_head: a count of heads follows the one, channels the other
        exact = [c for c in exact if counts_units(c[1]) == units] or exact
    if len(exact) > 1 and prefer_hint:  # prefer names that speak of widths (num_heads, out_chs)
        exact = [c for c in exact if any(h in c[1].lower() for h in WIDTH_ATTR_HINTS)] or exact
    if isinstance(value, tuple) and not isinstance(counts, Count):
        counts = tuple(counts)
    factor = exact[0][2]
    if isinstance(counts, Count) and factor != 1:
        counts = Count(np.repeat(counts.ids, factor), counts.unit)
    for path, name, f in exact:  # equal values in several attributes (dim_qk == dim_v): all follow
        if f == factor:
            register_attr(ctx, path, name, counts)
            if isinstance(value, int) and value > 1 and "head" in name.lower():
                # a helper's own copy (rel_pos.num_heads read in rel_pos.get_bias)
                for child, cname in _children_with(ctx, path, name, value):
                    register_attr(ctx, child, cname, counts)
    return True


_SHAPE_NAMES = ("shape", "view")  # a list attribute so named is a tensor shape forward code reshapes to


def _shape_holders(ctx: RuleContext, value: int) -> list[tuple[str, str, Any, int]]:
    """(module path, attribute, its value, index) for a list or tuple of ints named like a shape
    (MONAI UNETR's ``proj_view_shape = [*feat_size, hidden_size]``, viewed to as ``[B] + shape``)
    holding the literal once, in the module whose forward code made this node."""
    owner = ctx.owner_paths()[0]
    try:
        module = ctx.root.get_submodule(owner) if owner else ctx.root
    except AttributeError:
        return []
    return [(owner, name, attr, list(attr).index(value)) for name, attr in vars(module).items()
            if type(attr) in (list, tuple) and not name.startswith("_") and any(h in name.lower() for h in _SHAPE_NAMES)
            and all(type(v) is int for v in attr) and list(attr).count(value) == 1]


def _follow_entries(ctx: RuleContext, value: list, counts: list, prefer_hint: bool) -> bool:
    """One attribute per entry; one entry may be the rest of a total that is an attribute
    (SHViT's ``[self.pdim, self.dim - self.pdim]``: ``dim`` follows all the channels)."""
    missing = [i for i, (v, c) in enumerate(zip(value, counts))
               if isinstance(c, Count) and not attribute_candidates(ctx, v)]
    if len(missing) > 1 or (missing and not all(isinstance(c, Count) for c in counts)):
        return False
    if missing:
        total = Count(np.concatenate([c.ids for c in counts]))
        if not follow_literal(ctx, sum(value), total, prefer_hint):
            return False
    return all(follow_literal(ctx, v, c, prefer_hint) for i, (v, c) in enumerate(zip(value, counts))
               if isinstance(c, Count) and i not in missing)


def _children_with(ctx: RuleContext, path: str, name: str, value: int) -> list[tuple[str, str]]:
    """Direct children of module ``path`` holding an attribute ``name`` equal to ``value``."""
    try:
        module = ctx.root.get_submodule(path) if path else ctx.root
    except AttributeError:
        return []
    return [(f"{path}.{n}" if path else n, name) for n, child in module.named_children()
            if vars(child).get(name) == value and not isinstance(vars(child).get(name), bool)
            and type(child).__module__.split(".")[0] != "torch"]  # torch layers' sizes are their rules' business


def register_attr(ctx: RuleContext, path: str, name: str, template: Any) -> None:
    """``space.attr``, keeping two uses of one attribute consistent: equal widths or fixed.
    Every rule registers attributes through here."""
    existing = ctx.space.attrs.get((path, name))
    if existing is not None:
        _agree(ctx, existing.template, template)
    ctx.space.attr(path, name, template)


def _agree(ctx: RuleContext, a: Any, b: Any) -> None:
    if isinstance(a, Count) and isinstance(b, Count):
        if a.ids is b.ids or np.array_equal(a.ids, b.ids):
            return
        if len(a.ids) == len(b.ids) and a.unit == b.unit:
            ctx.space.balance([a.ids, b.ids])
        else:
            ctx.space.fix(np.concatenate([a.ids, b.ids]), f"one attribute sizes different channels at {ctx.space.context}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for x, y in zip(a, b):
            _agree(ctx, x, y)
    elif isinstance(a, Count) or isinstance(b, Count):
        ids = a.ids if isinstance(a, Count) else b.ids
        ctx.space.fix(ids, f"one attribute is both a width and a constant at {ctx.space.context}")


@dataclass(frozen=True)
class SizeExpr:
    """A size computed in forward code: ``active(ids) · num // den`` at every width, or a
    constant ``value`` when ``ids`` is None (read from a dim that never slims). ``literals``
    are the literal factors of a constant product (``B * self.num_heads``: the attribute may
    follow the width)."""

    value: int
    ids: np.ndarray | None = None
    num: int = 1
    den: int = 1
    literals: tuple[int, ...] = ()


_ARITH = {operator.mul, operator.floordiv, operator.truediv, operator.add, operator.sub}


def _is_whole_shape(node: Any) -> bool:
    """``x.shape`` or ``x.size()``."""
    return isinstance(node, fx.Node) and (
        (node.op == "call_function" and node.target is getattr and node.args[1] == "shape")
        or (node.op == "call_method" and node.target == "size" and len(node.args) == 1))


def _shape_read(node: fx.Node) -> tuple[fx.Node, int] | None:
    """``x.shape[i]``, ``x.size(i)``, ``B, C, H, W = x.shape``, ``B, N, C = x.shape[:3]`` (MViT's
    pooling): the tensor and the dim read."""
    if node.op == "call_method" and node.target == "size" and len(node.args) > 1:
        return node.args[0], node.args[1]
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], int):
        base = node.args[0]
        if _is_whole_shape(base):
            return base.args[0], node.args[1]
        if isinstance(base, fx.Node) and base.op == "call_function" and base.target is operator.getitem \
                and isinstance(base.args[1], slice) and _is_whole_shape(base.args[0]):
            whole = base.args[0].meta.get(VALUE_KEY)
            if isinstance(whole, (tuple, list)):
                dims = range(len(whole))[base.args[1]]
                if -len(dims) <= node.args[1] < len(dims):
                    return base.args[0].args[0], dims[node.args[1]]
    return None


def size_expr(ctx: RuleContext, arg: Any) -> SizeExpr | None:
    """Where a size argument comes from, or None when it cannot be told (computed some other way)."""
    if isinstance(arg, bool) or not isinstance(arg, (int, fx.Node)):
        return None
    if isinstance(arg, int):
        return SizeExpr(arg, literals=(arg,))
    read = _shape_read(arg)
    if read is not None:
        value = ctx.values.get(read[0])
        if not isinstance(value, (TensorVal, ParamVal)):
            return None
        x = ctx.tensor(value)
        dim = read[1] % x.ndim
        return SizeExpr(x.shape[dim], ctx.channel_ids(x, dim) if x.carries(dim) else None)
    if arg.op == "call_function" and arg.target in (int, operator.index):
        return size_expr(ctx, arg.args[0])
    if arg.op == "call_function" and arg.target in _ARITH and len(arg.args) == 2:
        return _arith(arg.target, size_expr(ctx, arg.args[0]), size_expr(ctx, arg.args[1]))
    value = arg.meta.get(VALUE_KEY)  # math.ceil(H / p) and friends: constant if all inputs are
    if isinstance(value, int) and not isinstance(value, bool) and arg.all_input_nodes and all(
            (e := size_expr(ctx, n)) is not None and e.ids is None for n in arg.all_input_nodes):
        return SizeExpr(value)
    return None


_COMPARISONS = {operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge}


def keep_compared_size(ctx: RuleContext, node: fx.Node) -> None:
    """``if num_channels != self.num_channels: raise`` (transformers' patch embeddings, checked
    again on every stage's input): a size read from slimming channels compared with a literal. The
    attribute holding the literal follows those channels, so the branch goes the same way at every
    width. A literal that is no attribute (``if skip.shape[1] != 0:``, smp's Linknet) becomes a
    condition the plan evaluates per switch (``SizeCondition``): the channels keep their size only
    where some switch's planned count would flip the answer."""
    if node.op != "call_function" or node.target not in _COMPARISONS or len(node.args) != 2:
        return
    for size, other in (node.args, node.args[::-1]):
        if not isinstance(size, fx.Node) or not isinstance(other, int) or isinstance(other, bool):
            continue
        expr = size_expr(ctx, size)
        if expr is None or expr.ids is None:
            continue
        if expr.num == 1 and expr.den == 1 and follow_literal(ctx, other, Count(np.asarray(expr.ids))):
            continue
        compare, first = node.target, size is node.args[0]
        decide = functools.partial(_compare, compare, other, first)
        ctx.space.size_conditions.append(SizeCondition(  # fixed by the plan only where a switch flips it
            np.asarray(expr.ids), expr.num, expr.den, decide, decide(expr.value),
            f"a size compared with {other} decides a branch at {ctx.space.context}"))


def _compare(op: Callable[[Any, Any], Any], literal: int, size_first: bool, size: int) -> bool:
    return bool(op(size, literal) if size_first else op(literal, size))


def _arith(op: Any, a: SizeExpr | None, b: SizeExpr | None) -> SizeExpr | None:
    if a is None or b is None or (a.ids is not None and b.ids is not None):
        return None
    value = int(op(a.value, b.value))
    if a.ids is None and b.ids is None:
        return SizeExpr(value, literals=a.literals + b.literals if op is operator.mul else ())
    if op is operator.mul:
        lin, k = (a, b.value) if a.ids is not None else (b, a.value)
        return SizeExpr(value, lin.ids, lin.num * k, lin.den)
    if op in (operator.floordiv, operator.truediv) and a.ids is not None and b.value > 0:
        return SizeExpr(value, a.ids, a.num, a.den * b.value)
    return None


def tie_sizes(ctx: RuleContext, source: SizeExpr, target: np.ndarray, blocks: bool = False) -> bool:
    """Make ``target`` (one id per index of a dim that slims) keep ``active(source) · num // den``
    entries at every width: a count balance, ``source`` against ``target`` repeated ``den``
    times (and the reverse for ``num``). Should the plan find them unequal it ties them position
    by position: entry j with source j, j+n, j+2n… (``(B, radix, C // radix)`` layouts), or with
    source block j when ``blocks`` (``C // num_heads``: heads are contiguous blocks).
    Returns False when the ratio cannot be kept (the caller fixes)."""
    ids, num, den = np.asarray(source.ids) if source.ids is not None else None, source.num, source.den
    target = np.asarray(target)
    if ids is None or len(ids) * num != len(target) * den or (num != 1 and den != 1 and num != den):
        return False
    k = 1 if num == den else max(num, den)
    spread = (lambda a: np.repeat(a, k)) if blocks else (lambda a: np.tile(a, k))
    if num == den:
        ctx.space.balance([ids, target])
    elif num == 1:  # one target entry per ``den`` source channels
        ctx.space.balance([ids, spread(target)])
    else:
        ctx.space.balance([spread(ids), target])
    return True
