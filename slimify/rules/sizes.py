"""Sizes baked into forward code: find the module attribute a literal came from, so it can
follow the width, or fix the channels with a reason naming the line of code."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch.fx as fx

from slimify.rules.base import RuleContext
from slimify.space import Count

__all__ = ["is_dynamic", "follow_literal"]

WIDTH_ATTR_HINTS = ("head", "group", "chs", "channels", "dim", "width", "split", "features")


def is_dynamic(arg: Any) -> bool:
    """A size computed at run time (from ``x.shape``) or ``-1``: it follows the width by itself."""
    return isinstance(arg, fx.Node) or arg == -1


def _attribute_candidates(ctx: RuleContext, value: Any) -> list[tuple[str, str, int]]:
    """(module path, attribute, factor) with ``attribute == value * factor`` in the modules
    whose forward code made this node, innermost first."""
    found = []
    for path in ctx.owner_paths():
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
    candidates = _attribute_candidates(ctx, value)
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
