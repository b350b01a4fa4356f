"""Step 3 of the pipeline: how many channels each group keeps at each switch, and what that
means for every parameter, attribute and BatchNorm the rewrite will touch.

It owns the channel counts of every width, not only the switches': :func:`counts_for` gives those
of any uniform width or per-group configuration by the same rounding (``unit_step``,
``uniform_counts``) and :func:`cuts_for` their cuts, so ``rewrite/config_slots.py`` only applies
what it is given."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from slimify.analysis.common_counts import common_counts
from slimify.analysis.groups import ChannelGroup, GroupTable
from slimify.analysis.space import FIXED, ChannelSpace, Count
from slimify.analysis.unique import unique
from slimify.errors import SlimifyError

if TYPE_CHECKING:
    from slimify.analysis.stages import Analysis

__all__ = ["make_divisible", "Plan", "make_plan", "Index", "group_divisor", "DEFAULT_DIVISOR",
           "EmptyPiece", "kept_classes", "active_ids", "unbalanced_pieces", "fill_cuts", "NotABox", "unit_step",
           "group_grid", "group_divisor_of", "uniform_counts", "counts_for", "kept_fraction", "cuts_for"]

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


def unit_step(unit: int, divisor: int) -> int:
    """The step a group of ``unit``-channel classes keeps channels in: ``lcm(unit, divisor)``
    (whole heads or conv groups, on the divisor's grid). Every count of every width uses it."""
    return unit * divisor // math.gcd(unit, divisor)


def _kept_classes(n: int, unit: int, w: float, divisor: int) -> int:
    """Classes kept at width ``w``: ``make_divisible(C·w)`` channels in whole units, never
    below one divisor, never above C, and all of them at width 1.0."""
    total = n * unit
    step = unit_step(unit, divisor)
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


def make_plan(space: ChannelSpace, table: GroupTable, switches: tuple[float, ...], divisor: int | None) -> Plan:
    """Raises :class:`NotABox` naming the ids to fix when a tensor could not be served narrow.
    ``divisor=None`` picks one per group (``group_divisor``)."""
    auto, base = divisor is None, DEFAULT_DIVISOR if divisor is None else divisor
    divisors = {g.index: base if g.fixed else group_divisor(len(g.classes), g.unit, switches, base, auto)
                for g in table.groups}
    per_switch = uniform_counts(space, table, switches, divisors)
    actives = [active_ids(table, k) for k in per_switch]
    unbalanced = unbalanced_pieces(space, table, actives)
    kept = {g.index: [k[g.index] for k in per_switch] for g in table.groups}
    plan = Plan(switches, base, kept, auto_divisor=auto, group_divisors=divisors)
    if unbalanced:  # as one pair of concatenated pieces: one planning round for all of them
        pairs = [(pieces[0], p) for pieces in unbalanced for p in pieces[1:]]
        raise Unbalanced([np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs])])
    fill_cuts(plan, space, actives)
    return plan


def uniform_counts(space: ChannelSpace, table: GroupTable, widths: tuple[float, ...],
                   divisors: dict[int, int] | int) -> list[list[int]]:
    """Classes each group keeps at each uniform width: its own rounding (``kept_classes``), then,
    on a space planned with ``common_counts``, equal counts by a common multiple where that
    rounding gives the equal pieces of a ``chunk`` different widths. The switches (``make_plan``)
    and every other uniform width (``counts_for``) are counted by it."""
    per_width = [kept_classes(table, w, divisors) for w in widths]
    if space.common_counts and unbalanced_pieces(space, table, [active_ids(table, k) for k in per_width]):
        common_counts(space, table, widths, per_width, active_ids)
    return per_width


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


# -- widths that are no switch: counted here, served by ``rewrite/config_slots.py`` ----------------

def group_divisor_of(plan: Plan, group: ChannelGroup) -> int:
    """The divisor ``group`` was planned with (its own one when the divisor is automatic)."""
    return plan.group_divisors.get(group.index, plan.divisor)


def group_grid(group: ChannelGroup, divisor: int) -> list[int]:
    """Channel counts a group may keep: multiples of ``unit_step`` up to its size, and its size
    (fixed groups: only their size). ``divisor``: the group's own (``group_divisor_of``)."""
    if group.fixed:
        return [group.size]
    step = unit_step(group.unit, divisor)
    return sorted({k * step for k in range(1, group.size // step + 1)} | {group.size})


def counts_for(analysis: Analysis, value: Any) -> tuple[int, ...]:
    """Classes each group keeps at ``value``: a uniform width between the narrowest switch and 1
    (rounded like the switches, ``chunk`` pieces kept balanced) or a per-group configuration
    ``{group: channels}`` on each group's grid (groups not named keep all of theirs)."""
    if isinstance(value, dict):
        return _configured_counts(analysis, value)
    try:
        w = float(value)
    except (TypeError, ValueError):
        raise SlimifyError(f"a width must be a number, a configuration dict or a name, got {value!r}") from None
    plan = analysis.plan
    low = min(plan.switches)
    if not (low - 1e-9 <= w <= 1.0 + 1e-9) or math.isnan(w):
        raise SlimifyError(f"width {w:g} is outside this model's range [{low:g}, 1] (its narrowest switch to full "
                           "width); convert with a narrower switch to go lower")
    known = analysis.width_counts.get(w)
    if known is None:
        counts = uniform_counts(analysis.space, analysis.table, (w,), plan.group_divisors or plan.divisor)[0]
        known = tuple(_balanced_above(analysis, w, counts) if _unbalanced_groups(analysis, counts) else counts)
        analysis.width_counts[w] = known
    return known


def _unbalanced_groups(analysis: Analysis, counts: list[int]) -> set[int]:
    """Slimmable groups whose ``chunk`` pieces ``counts`` would give different widths."""
    table = analysis.table
    bad = unbalanced_pieces(analysis.space, table, [active_ids(table, counts)])
    return {int(g) for pieces in bad for p in pieces for g in unique(table.group_of_id[p])
            if g >= 0 and not table.groups[g].fixed}


def _balanced_above(analysis: Analysis, w: float, counts: list[int]) -> list[int]:
    """A uniform width whose rounding gives the equal pieces of a ``chunk`` different widths
    (groups of different units round differently; the plan only tied the pieces where a switch
    did): those groups take the counts of the nearest width above ``w`` that balances them, at
    worst the next wider switch's (balanced by the plan); every other group keeps ``w``'s."""
    plan, table = analysis.plan, analysis.table
    divisors = plan.group_divisors or plan.divisor
    wider = min((s for s in plan.switches if s >= w), default=1.0)
    steps = 256
    for k in range(1, steps + 1):
        above = kept_classes(table, w + (wider - w) * k / steps, divisors)
        trial, moved = list(counts), set()
        while (groups := _unbalanced_groups(analysis, trial)) and not groups <= moved:
            moved |= groups
            trial = [above[i] if i in moved else c for i, c in enumerate(counts)]
        if not groups:
            return trial
    if wider not in plan.switches:  # above every switch: every class
        return [len(g.classes) for g in table.groups]
    i = plan.switches.index(wider)  # as the plan balanced it (ties or common counts)
    return [plan.kept[g.index][i] for g in table.groups]


def _configured_counts(analysis: Analysis, value: dict) -> tuple[int, ...]:
    groups = analysis.table.groups
    counts = [len(g.classes) for g in groups]
    for key, channels in value.items():
        try:
            gi = int(key)
        except (TypeError, ValueError):
            raise SlimifyError(f"configuration key {key!r} is not a group index (see slimify.report(model))") from None
        if not 0 <= gi < len(groups) or str(key).strip() != str(gi):
            raise SlimifyError(f"configuration names group {key!r}, which does not exist: this model has groups "
                               f"0..{len(groups) - 1} (slimify.report(model) lists them)")
        g = groups[gi]
        divisor = group_divisor_of(analysis.plan, g)
        grid = group_grid(g, divisor)
        if isinstance(channels, bool) or not isinstance(channels, (int, np.integer)) or int(channels) not in grid:
            shown = ", ".join(map(str, grid[:8])) + (", …" if len(grid) > 8 else "")
            why = f"it is fixed ({g.reason})" if g.fixed else f"divisor {divisor}, unit {g.unit}"
            raise SlimifyError(f"group {gi} cannot keep {channels!r} channels: it keeps one of {shown} ({why})")
        counts[gi] = int(channels) // g.unit
    return tuple(counts)


def kept_fraction(table: GroupTable, counts: tuple[int, ...]) -> float:
    """The share of the slimmable channels that ``counts`` keeps (a configuration's width)."""
    slim = [g for g in table.groups if not g.fixed]
    total = sum(g.size for g in slim)
    return sum(counts[g.index] * g.unit for g in slim) / total if total else 1.0


def cuts_for(analysis: Analysis, counts: tuple[int, ...], label: str) -> Plan:
    """How every tensor, attribute, BatchNorm and padded output is cut when each group keeps its
    first ``counts`` classes: a plan of one column (its ``output_widths``: the active features of
    each padded output, whether or not a switch pads). ``label`` names the configuration in the
    error raised when it cannot be served."""
    space, table = analysis.space, analysis.table
    active = active_ids(table, list(counts))
    bad = unbalanced_pieces(space, table, [active])
    if bad:
        groups = sorted({int(g) for p in bad[0] for g in unique(table.group_of_id[p]) if g >= 0})
        raise SlimifyError(f"configuration {label} gives the equal pieces of a chunk different widths: groups "
                           f"{', '.join(map(str, groups))} must keep equal counts")
    plan = Plan((1.0,), analysis.plan.divisor, {})
    try:
        fill_cuts(plan, space, [active])
        if space.output_ids is not None:
            plan.output_widths = [output_counts(space, active)]  # also checks the padded output stays a prefix
    except NotABox as e:
        raise SlimifyError(f"configuration {label} cannot be served: {e.reason}") from None
    except EmptyPiece as e:
        raise SlimifyError(f"configuration {label} cannot be served: {e.origin} would count no channels") from None
    return plan
