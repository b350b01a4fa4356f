"""Equal counts for tied groups whose units differ: a common multiple instead of one merged group.

A balance (``ChannelSpace.balance``: the equal pieces of a ``chunk``, a reshape that reads one
tensor's channel count as another's) asks that its pieces keep equally many channels at every
switch. Each group plans its own width (``plan._kept_classes``), and where that breaks a balance
the planner ties the pieces position by position (``analysis.stages._plan``), which merges their
groups. That is right when the groups slim in the same steps, but not when their units differ:
EdgeNeXt's SplitTransposeBlock chunks its stream into n equal pieces while its XCA attention reads
the same width as 4 heads that slim whole (an outer product over a head's channels). Tying a
pieces' position to a head's channels merges every piece and every head into one class: the whole
stage keeps its width. The counts only need to be *equal*, though: one piece per head count, i.e.
a common multiple of the units (EdgeNeXt-XXS stage 3: 168 channels, chunk(4) and 4 heads of 42:
84 or 168).

:func:`common_counts` finds such counts. For a set of groups linked by balances (a component)
whose units differ, at a switch where the groups' own widths break a balance, it tries every
count of the group with the fewest classes (the coarsest: heads), derives the count every other
group must keep from the balances (each piece's count is a step function of its group's kept
classes, so an equal count is an interval of them), checks every balance of the component, and
keeps the solution whose share of the component's channels comes nearest the switch's width (ties
to fewer). Components it cannot solve are left as they were, for the planner's ties.

The plan uses it only on a space with ``common_counts`` set: ``analysis.stages.analyze_model``
sets it on a second analysis when ties leave channels stuck at full width, and keeps whichever
plan leaves fewer. Tried everywhere, it would also split streams from heads that ties merge
harmlessly (EVA02, Swin-V2: other groups, no fewer MACs).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from slimify.analysis.groups import GroupTable
from slimify.analysis.space import ChannelSpace
from slimify.analysis.unique import unique

__all__ = ["common_counts"]


@dataclass
class _Piece:
    """One piece of a balance: ``fixed`` ids always active, plus the ids of ``group`` (``None``:
    no slimmable group, or several; then it is only checked, never solved for)."""

    ids: np.ndarray
    group: int | None
    ranks: np.ndarray  # sorted ranks of its ids inside ``group``
    fixed: int  # ids active at every width (in no group or in a fixed one)

    def count(self, kept: int) -> int:
        return self.fixed + int(np.searchsorted(self.ranks, kept))

    def kept_for(self, count: int, size: int) -> tuple[int, int]:
        """Kept classes of its group that give ``count`` active ids: an interval (empty: lo > hi)."""
        c = count - self.fixed
        if c < 0 or c > len(self.ranks):
            return 1, 0
        lo = 1 if c == 0 else int(self.ranks[c - 1]) + 1
        hi = size if c == len(self.ranks) else int(self.ranks[c])
        return max(lo, 1), min(hi, size)


def _pieces(table: GroupTable, balance: list[np.ndarray]) -> list[_Piece]:
    out = []
    live = np.array([not g.fixed for g in table.groups] + [False], bool)
    for ids in balance:
        groups = table.group_of_id[ids]
        variable = live[groups]  # -1 (no group) indexes the trailing False
        found = unique(groups[variable])
        group = int(found[0]) if found.size == 1 else None
        ranks = np.sort(table.rank[ids[variable]]) if group is not None else np.zeros(0, np.int64)
        out.append(_Piece(ids, group, ranks, int((~variable).sum())))
    return out


def _components(table: GroupTable, balances: list[list[_Piece]]) -> list[tuple[set[int], list[list[_Piece]]]]:
    """Groups linked by balances, with their balances."""
    parent: dict[int, int] = {}

    def find(g: int) -> int:
        while parent.setdefault(g, g) != g:
            g = parent[g]
        return g

    touched = []
    for pieces in balances:
        groups = {int(g) for p in pieces for g in unique(table.group_of_id[p.ids])
                  if g >= 0 and not table.groups[g].fixed}
        touched.append(groups)
        for g in groups:
            parent[find(g)] = find(min(groups))
    by_root: dict[int, tuple[set[int], list[list[_Piece]]]] = {}
    for pieces, groups in zip(balances, touched):
        if groups:
            members, linked = by_root.setdefault(find(min(groups)), (set(), []))
            members |= groups
            linked.append(pieces)
    return list(by_root.values())


def _count(piece: _Piece, kept: dict[int, int], table: GroupTable, active: np.ndarray | None) -> int | None:
    if piece.group is not None:
        return piece.count(kept[piece.group]) if piece.group in kept else None
    return None if active is None else int(active[piece.ids].sum())


def _solve(leader_kept: int, leader: int, members: set[int], balances: list[list[_Piece]], table: GroupTable,
           target: dict[int, int]) -> dict[int, int] | None:
    """Kept classes of every member group, given the leader's; ``None`` when the balances cannot hold."""
    kept = {leader: leader_kept}
    while True:
        bounds: dict[int, tuple[int, int]] = {}
        for pieces in balances:
            known = {c for c in (_count(p, kept, table, None) for p in pieces) if c is not None}
            if len(known) > 1:
                return None
            if not known:
                continue
            count = known.pop()
            for p in pieces:
                if p.group is not None and p.group not in kept:
                    lo, hi = p.kept_for(count, len(table.groups[p.group].classes))
                    old = bounds.get(p.group, (lo, hi))
                    bounds[p.group] = (max(lo, old[0]), min(hi, old[1]))
        if not bounds:
            break
        for g, (lo, hi) in bounds.items():
            if lo > hi:
                return None
            kept[g] = min(max(target[g], lo), hi)  # nearest the group's own width
    return {g: kept.get(g, target[g]) for g in members}


def _balanced(balances: list[list[_Piece]], active: np.ndarray) -> bool:
    return all(len({int(active[p.ids].sum()) for p in pieces}) == 1 for pieces in balances)


def common_counts(space: ChannelSpace, table: GroupTable, switches: tuple[float, ...], per_switch: list[list[int]],
                  active_ids: Callable[[GroupTable, list[int]], np.ndarray]) -> bool:
    """Change ``per_switch`` (classes kept per group, per switch) in place so that every balance
    linking groups of different units holds, where a common count exists; ``True`` if it changed.
    ``active_ids``: ``plan.active_ids`` (the plan imports this module)."""
    balances = [_pieces(table, b) for b in space.balances]
    changed = False
    for members, linked in _components(table, balances):
        if len({table.groups[g].unit for g in members}) < 2:
            continue  # equal units: tying position by position keeps their steps (the planner does it)
        sizes = {g: len(table.groups[g].classes) for g in members}
        channels = {g: table.groups[g].size for g in members}
        leader = min(members, key=lambda g: (sizes[g], g))
        solved = []
        for s, w in enumerate(switches):
            kept = per_switch[s]
            if _balanced(linked, active_ids(table, kept)):
                solved.append(None)
                continue
            target = {g: kept[g] for g in members}
            best: tuple[float, int, dict[int, int]] | None = None
            for k in range(1, sizes[leader] + 1):
                found = _solve(k, leader, members, linked, table, target)
                if found is None:
                    continue
                trial = list(kept)
                for g, v in found.items():
                    trial[g] = v
                if not _balanced(linked, active_ids(table, trial)):
                    continue
                share = sum(found[g] / sizes[g] * channels[g] for g in members) / sum(channels.values())
                key = (round(abs(share - w), 9), share)  # nearest the width, ties to fewer (1/3 and 2/3 of 0.5)
                if best is None or key < best[:2]:
                    best = (key[0], key[1], found)
            if best is None:
                break
            solved.append(best[2])
        if len(solved) != len(switches):
            continue  # some switch has no common count: leave the component to the planner's ties
        for s, found in enumerate(solved):
            if found is not None:
                for g, v in found.items():
                    per_switch[s][g] = v
                changed = True
    return changed
