"""Sizes baked into forward code: find the module attribute a literal came from, so it can
follow the width, or fix the channels with a reason naming the line of code."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.fx as fx

from slimify.rules.base import ParamVal, RuleContext, TensorVal
from slimify.space import Count

__all__ = ["is_dynamic", "follow_literal", "attribute_candidates", "SizeExpr", "size_expr", "tie_sizes"]

WIDTH_ATTR_HINTS = ("head", "group", "chs", "channels", "dim", "width", "split", "features")


def is_dynamic(arg: Any) -> bool:
    """A size computed at run time (from ``x.shape``) or ``-1``: it follows the width by itself."""
    return isinstance(arg, fx.Node) or arg == -1


def attribute_candidates(ctx: RuleContext, value: Any) -> list[tuple[str, str, int]]:
    """(module path, attribute, factor) with ``attribute == value * factor`` in the module
    whose forward code made this node (an outer module's attribute of the same value is a
    coincidence more often than the source: ``Scale.shape`` vs its block's ``dim``)."""
    found = []
    for path in ctx.owner_paths()[:1]:
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


def follow_literal(ctx: RuleContext, value: Any, counts: Any, prefer_hint: bool = True) -> bool:
    """Make the attribute that holds the literal ``value`` follow ``counts`` (a Count or a
    list of Counts with the same structure as ``value``). Returns False when no attribute is
    found unambiguously: the caller then fixes the channels."""
    candidates = attribute_candidates(ctx, value)
    if not candidates:
        return False
    exact = [c for c in candidates if c[2] == 1] or candidates
    if len(exact) > 1 and prefer_hint:  # prefer names that speak of widths (num_heads, out_chs)
        exact = [c for c in exact if any(h in c[1].lower() for h in WIDTH_ATTR_HINTS)] or exact
    path, name, factor = exact[0]
    if isinstance(counts, Count) and factor != 1:
        counts = Count(np.repeat(counts.ids, factor), counts.unit)
    if isinstance(value, tuple) and not isinstance(counts, Count):
        counts = tuple(counts)
    ctx.space.attr(path, name, counts)
    return True


@dataclass(frozen=True)
class SizeExpr:
    """A size computed in forward code: ``active(ids) · num // den`` at every width, or a
    constant ``value`` when ``ids`` is None (read from a dim that never slims)."""

    value: int
    ids: np.ndarray | None = None
    num: int = 1
    den: int = 1


_ARITH = {operator.mul, operator.floordiv, operator.truediv, operator.add, operator.sub}


def _shape_read(node: fx.Node) -> tuple[fx.Node, int] | None:
    """``x.shape[i]``, ``x.size(i)``, ``B, C, H, W = x.shape``: the tensor and the dim read."""
    if node.op == "call_method" and node.target == "size" and len(node.args) > 1:
        return node.args[0], node.args[1]
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[1], int):
        base = node.args[0]
        if isinstance(base, fx.Node) and (
                (base.op == "call_function" and base.target is getattr and base.args[1] == "shape")
                or (base.op == "call_method" and base.target == "size" and len(base.args) == 1)):
            return base.args[0], node.args[1]
    return None


def size_expr(ctx: RuleContext, arg: Any) -> SizeExpr | None:
    """Where a size argument comes from, or None when it cannot be told (computed some other way)."""
    if isinstance(arg, bool) or not isinstance(arg, (int, fx.Node)):
        return None
    if isinstance(arg, int):
        return SizeExpr(arg)
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
    return None


def _arith(op: Any, a: SizeExpr | None, b: SizeExpr | None) -> SizeExpr | None:
    if a is None or b is None or (a.ids is not None and b.ids is not None):
        return None
    value = int(op(a.value, b.value))
    if a.ids is None and b.ids is None:
        return SizeExpr(value)
    if op is operator.mul:
        lin, k = (a, b.value) if a.ids is not None else (b, a.value)
        return SizeExpr(value, lin.ids, lin.num * k, lin.den)
    if op in (operator.floordiv, operator.truediv) and a.ids is not None and b.value > 0:
        return SizeExpr(value, a.ids, a.num, a.den * b.value)
    return None


def tie_sizes(ctx: RuleContext, source: SizeExpr, target: np.ndarray) -> bool:
    """Make ``target`` (one id per index of a dim that slims) keep ``active(source) · num // den``
    entries at every width. Returns False when the ratio cannot be kept (the caller fixes)."""
    ids, num, den = source.ids, source.num, source.den
    if ids is None or len(ids) * num != len(target) * den:
        return False
    if num == den:  # tied position by position (a balance would cost the planner a retry each)
        ctx.space.union(np.asarray(ids), np.asarray(target))
    elif num == 1:  # one target entry per ``den`` source channels
        ctx.space.union(np.asarray(target)[:, None], np.asarray(ids).reshape(len(target), den))
    elif den == 1:
        ctx.space.union(np.asarray(ids)[:, None], np.asarray(target).reshape(len(ids), num))
    else:
        return False
    return True
