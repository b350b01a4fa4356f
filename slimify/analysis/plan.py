"""Step 3 of the pipeline: how many channels each group keeps at each switch, and what that
means for every parameter, attribute and BatchNorm the rewrite will touch."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimify.analysis.common_counts import common_counts
from slimify.analysis.groups import GroupTable
from slimify.analysis.space import FIXED, ChannelSpace, Count
from slimify.analysis.unique import unique
from slimify.errors import SlimifyError

__all__ = ["make_divisible", "check_switches", "check_minimum", "Plan", "make_plan", "Index", "group_divisor", "DEFAULT_DIVISOR",
           "EmptyPiece", "kept_classes", "active_ids", "unbalanced_pieces", "fill_cuts", "NotABox"]

DEFAULT_DIVISOR = 8  # ``divisor=None``: 8, or the largest smaller power of two a narrow group needs
AUTO_TOLERANCE = 0.08  # an automatic divisor keeps every switch within 8% of C·w where one can (see group_divisor)

Index = slice | np.ndarray | None  # how one dim of a tensor is cut at one switch (None: whole)


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """torchvision's rounding: nearest multiple of ``divisor``, never more than 10% below."""
    min_value = divisor if min_value is None else min_value
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def check_switches(switches: Any, divisor: Any) -> tuple[tuple[float, ...], int | None]:
    try:
        values = tuple(float(s) for s in switches)
    except (TypeError, ValueError) as e:
        raise SlimifyError(f"switches must be numbers in (0, 1], got {switches!r}") from e
    if not values:
        raise SlimifyError("switches is empty: give at least one width in (0, 1], e.g. (0.25, 0.5, 1.0)")
    bad = [s for s in values if not (0.0 < s <= 1.0) or math.isnan(s)]
    if bad:
        raise SlimifyError(f"switches must lie in (0, 1]; got {bad}")
    if len(set(values)) != len(values):
        raise SlimifyError(f"switches contain duplicates: {list(values)}")
    if divisor is not None and (isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 1):
        raise SlimifyError(f"divisor must be an integer >= 1 (or None: automatic), got {divisor!r}")
    return tuple(sorted(values)), divisor


@dataclass
class Plan:
    """Everything the rewrite needs, as data: per switch, an index per sliced dim of each
    parameter, a value per width-dependent attribute and the channels of each BatchNorm."""

    switches: tuple[float, ...]
    divisor: int  # the divisor asked for (``DEFAULT_DIVISOR`` when automatic)
    kept: dict[int, list[int]]  # group index → classes kept per switch
    params: dict[tuple[str, str], list[dict[int, Index]]] = field(default_factory=dict)
    attrs: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    batchnorms: dict[str, list[np.ndarray]] = field(default_factory=dict)
    # a feature output that narrow switches pad back with zeros: its active features per switch
    output_widths: list[tuple[int, ...]] | None = None  # per switch, the active features of each padded tensor
    output_layout: list[tuple[int, int, int]] = field(default_factory=list)  # those tensors: (index, dim, size)
    auto_divisor: bool = False  # ``divisor=None``: narrow groups may use a smaller one
    group_divisors: dict[int, int] = field(default_factory=dict)  # group index → divisor it used


def _kept_classes(n: int, unit: int, w: float, divisor: int) -> int:
    """Classes kept at width ``w``: ``make_divisible(C·w)`` channels in whole units, never
    below one divisor, never above C, and all of them at width 1.0."""
    total = n * unit
    step = unit * divisor // math.gcd(unit, divisor)
    if w >= 1.0 or step >= total:
        return n
    if step > divisor:  # whole heads or conv groups: the nearest count (ties to fewer), never none
        return max(step // unit, min(n, math.floor(total * w / step + 0.5 - 1e-9) * (step // unit)))
    return max(1, min(total, make_divisible(total * w, step)) // unit)


def group_divisor(n: int, unit: int, switches: tuple[float, ...], divisor: int, auto: bool) -> int:
    """``divisor`` itself unless ``auto``; then the largest power of two up to it that keeps every
    switch within ``AUTO_TOLERANCE`` of C·w (a 24-channel layer at 0.25 keeps 6, not 8), else the
    one that comes closest (whole heads: every divisor gives the same count, the largest is kept).
    8%, not 10%: an 88-channel group at 0.5 rounds up by one step of 8 to 48 (+9%), which alone
    kept timm lcnet_035's width 0.5 at 0.351 of the MACs (0.333 at 8%; 14 of the 246 zoo models
    change some group's divisor, their MACs at 0.5 by at most 0.01: benchmarks/RESULTS.md)."""
    if not auto:
        return divisor
    total, best = n * unit, (math.inf, divisor)
    d = 1 << (divisor.bit_length() - 1)
    while d >= 1:
        error = max(abs(_kept_classes(n, unit, w, d) * unit - total * w) / (total * w) for w in switches)
        if error <= AUTO_TOLERANCE:
            return d
        if error < best[0] - 1e-9:
            best = (error, d)
        d //= 2
    return best[1]


def _to_index(mask: np.ndarray) -> Index:
    if mask.all():
        return None
    idx = np.nonzero(mask)[0]
    if idx.size and idx[-1] - idx[0] + 1 == idx.size:
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


class Unbalanced(Exception):
    """Pieces of a ``chunk`` would get different widths: they must be tied together."""

    def __init__(self, pieces: list[np.ndarray]) -> None:
        super().__init__("unbalanced pieces")
        self.pieces = pieces


class EmptyPiece(Exception):
    """A size that forward code reads (a conv's ``groups``, one of a list of split sizes) would be
    0 at a narrow switch: the piece of a group it counts kept none of its channels. Planning cuts
    the piece's channels into a group of their own, which keeps at least one unit."""

    def __init__(self, ids: np.ndarray, origin: str) -> None:
        super().__init__("empty piece")
        self.ids = ids
        self.origin = origin


class NotABox(Exception):
    """A tensor whose active elements are not a product of per-dim index sets."""

    def __init__(self, ids: np.ndarray, reason: str = "a tensor read by forward code would not stay rectangular") -> None:
        super().__init__("not a box")
        self.ids = ids
        self.reason = reason


def _elementwise_index(label: np.ndarray, active: np.ndarray) -> dict[int, Index]:
    mask = active[label]
    dims: dict[int, Index] = {}
    box = np.ones((1,) * mask.ndim, bool)
    for d in range(mask.ndim):
        along = mask.any(axis=tuple(o for o in range(mask.ndim) if o != d))
        box = box & along.reshape([-1 if o == d else 1 for o in range(mask.ndim)])
        index = _to_index(along)
        if index is not None:
            dims[d] = index
    if not np.array_equal(np.broadcast_to(box, mask.shape), mask):
        raise NotABox(label[mask != np.broadcast_to(box, mask.shape)])
    return dims


def _value(template: Any, active: np.ndarray, origin: str = "") -> Any:
    if isinstance(template, Count):
        n = int(active[template.ids].sum())
        if n % template.unit:
            raise NotABox(template.ids)
        if n == 0 and template.ids.size and (template.ids != FIXED).any():
            raise EmptyPiece(template.ids, origin)
        return n // template.unit
    if isinstance(template, (list, tuple)):
        return type(template)(_value(t, active, origin) for t in template)
    return template


def kept_classes(table: GroupTable, w: float, divisors: dict[int, int] | int) -> list[int]:
    """Classes each group keeps at the uniform width ``w`` (fixed groups keep all); ``divisors``
    is each group's own divisor (``Plan.group_divisors``) or one for all."""
    return [len(g.classes) if g.fixed else _kept_classes(
        len(g.classes), g.unit, w, divisors if isinstance(divisors, int) else divisors[g.index])
        for g in table.groups]


def active_ids(table: GroupTable, kept: list[int]) -> np.ndarray:
    """Which channel ids are active when group ``g`` keeps its first ``kept[g]`` classes."""
    limit = np.array(list(kept) + [np.iinfo(np.int64).max], np.int64)
    group = np.where(table.group_of_id >= 0, table.group_of_id, len(table.groups))
    return table.rank < limit[group]


def unbalanced_pieces(space: ChannelSpace, table: GroupTable, actives: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Sets of ``chunk`` pieces that would get different widths (one round: each set whose groups
    no earlier one touched)."""
    unbalanced, touched = [], set()
    for pieces in space.balances:
        if any(len({int(active[p].sum()) for p in pieces}) > 1 for active in actives):
            groups = {g for g in unique(table.group_of_id[np.concatenate(pieces)]).tolist()
                      if g >= 0 and not table.groups[g].fixed}  # tying to a fixed group only fixes: no order
            if not groups & touched:
                unbalanced.append(pieces)
            touched |= groups
    return unbalanced


def check_minimum(table: GroupTable, switches: tuple[float, ...], name: str) -> None:
    """Refuse a switch at which even the widest slimmable group would keep no channel (C·w < 1):
    every group would be rounded up to its minimum, so the switch would not be the width it says.
    The message names the smallest usable width (1/C of that group). A narrow group alone keeping
    less than one channel is not refused: the plan keeps one unit of it (an SE layer of 2 channels
    at the default 0.25)."""
    sizes = [g.size for g in table.groups if not g.fixed]
    if not sizes or switches[0] * max(sizes) >= 1:
        return
    smallest = math.ceil(1000 / max(sizes)) / 1000
    raise SlimifyError(f"switch {switches[0]:g} is too narrow for {name}: its widest slimmable group of {max(sizes)} "
                       f"channels would keep {switches[0] * max(sizes):.2g} of them; the smallest usable width is "
                       f"{smallest:g}")


def make_plan(space: ChannelSpace, table: GroupTable, switches: tuple[float, ...], divisor: int | None) -> Plan:
    """Raises :class:`NotABox` naming the ids to fix when a tensor could not be served narrow.
    ``divisor=None`` picks one per group (``group_divisor``)."""
    auto, base = divisor is None, DEFAULT_DIVISOR if divisor is None else divisor
    divisors = {g.index: base if g.fixed else group_divisor(len(g.classes), g.unit, switches, base, auto)
                for g in table.groups}
    per_switch = [kept_classes(table, w, divisors) for w in switches]
    actives = [active_ids(table, k) for k in per_switch]
    unbalanced = unbalanced_pieces(space, table, actives)
    if unbalanced and space.common_counts and common_counts(space, table, switches, per_switch, active_ids):
        actives = [active_ids(table, k) for k in per_switch]
        unbalanced = unbalanced_pieces(space, table, actives)
    kept = {g.index: [k[g.index] for k in per_switch] for g in table.groups}
    plan = Plan(switches, base, kept, auto_divisor=auto, group_divisors=divisors)
    if unbalanced:  # as one pair of concatenated pieces: one planning round for all of them
        pairs = [(pieces[0], p) for pieces in unbalanced for p in pieces[1:]]
        raise Unbalanced([np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs])])
    fill_cuts(plan, space, actives)
    return plan


def fill_cuts(plan: Plan, space: ChannelSpace, actives: list[np.ndarray]) -> None:
    """How every parameter, attribute, BatchNorm and padded output is cut at each of ``actives``."""
    for key, spec in space.params.items():
        per_switch = []
        for active in actives:
            dims = {d: _to_index(active[ids]) for d, ids in spec.dims.items()}
            if spec.elementwise is not None:
                for d, index in _elementwise_index(spec.elementwise, active).items():
                    dims.setdefault(d, index)
            per_switch.append({d: i for d, i in dims.items() if i is not None})
        plan.params[key] = per_switch
    for key, spec in space.attrs.items():
        plan.attrs[key] = [_value(spec.template, active, f"{key[0]}.{key[1]}") for active in actives]
    for bn in space.batchnorms:
        plan.batchnorms[bn.module] = [np.nonzero(active[bn.ids])[0] for active in actives]
    if space.output_ids is not None:
        plan.output_widths = _output_widths(space, actives)
        plan.output_layout = list(space.output_layout)
    for condition in space.size_conditions:  # a branch on a size must go the example's way at every switch
        if not all(condition.holds(active) for active in actives):
            raise NotABox(condition.ids, f"{condition.reason}, and a narrow width would change its answer")


def output_counts(space: ChannelSpace, active: np.ndarray) -> tuple[int, ...]:
    """Active features of each padded output tensor; they must be a prefix (zeros pad the end)."""
    counts, start = [], 0
    for _, _, size in space.output_layout:
        mask = active[space.output_ids[start:start + size]]
        k = int(mask.sum())
        if not mask[:k].all():
            raise NotABox(space.output_ids, "model output: its active features would not be a prefix, which padding needs")
        counts.append(k)
        start += size
    return tuple(counts)


def _output_widths(space: ChannelSpace, actives: list[np.ndarray]) -> list[tuple[int, ...]] | None:
    """:func:`output_counts` per switch; None when no switch narrows the output."""
    widths = [output_counts(space, active) for active in actives]
    full = tuple(size for _, _, size in space.output_layout)
    return widths if any(w != full for w in widths) else None
