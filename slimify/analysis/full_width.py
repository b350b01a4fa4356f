"""Why a group that no rule fixed still keeps its full size at width 0.5: the report must account
for every channel that stays wide (issue 24). The usual cause is one *unit* spanning the whole
group: some op joined each of its channels to every other (a contraction treating a weight as an
activation, a reshape folding channels into one slab), so the group slims only as a whole. The
reason names the op and line that first joined two channels of one producer in that group."""
from __future__ import annotations

import numpy as np

from slimify.analysis.groups import ChannelGroup, GroupTable
from slimify.analysis.plan import Plan
from slimify.analysis.space import ChannelSpace

__all__ = ["full_width_reasons"]


def full_width_reasons(space: ChannelSpace, table: GroupTable, plan: Plan) -> dict[int, str]:
    """Group index → why it keeps its full size at the switch nearest 0.5, for every group that
    is not fixed yet does (none when the plan has no narrower switch)."""
    narrow = [i for i, w in enumerate(plan.switches) if w < 1.0]
    if not narrow:
        return {}
    at = min(narrow, key=lambda i: abs(plan.switches[i] - 0.5))
    stuck = [g for g in table.groups if not g.fixed and plan.kept[g.index][at] * g.unit >= g.size]
    if not stuck:
        return {}
    starts = np.array([v.start for v in space.vars], np.int64)
    reasons = {}
    for g in stuck:
        width = plan.switches[at]
        divisor = plan.group_divisors.get(g.index, plan.divisor)
        if g.unit >= g.size:
            where = _first_join(space, table, starts, g)
            reasons[g.index] = (f"one unit of {g.size} channels (every channel joined to every other"
                                f"{' at ' + where if where else ''}): it slims only as a whole, so width {width:g} "
                                f"keeps it at full size")
        else:
            reasons[g.index] = (f"{g.size} channels in units of {g.unit} with divisor {divisor}: width {width:g} "
                                f"rounds up to the full size")
    return reasons


def _first_join(space: ChannelSpace, table: GroupTable, starts: np.ndarray, group: ChannelGroup) -> str:
    """The context of the first union that tied two different channels of one producer inside
    ``group`` (what made them one unit), or "" when none was recorded."""
    for (a, b), where in zip(space.pair_records(), space.pair_contexts):
        inside = (table.group_of_id[a] == group.index) & (table.group_of_id[b] == group.index)
        if not inside.any():
            continue
        a, b = a[inside], b[inside]
        var_a, var_b = np.searchsorted(starts, a, "right"), np.searchsorted(starts, b, "right")
        if ((var_a == var_b) & (a != b)).any() and where:
            return where
    return ""
