"""Channel classes and channel groups from the recorded constraints.

A *class* is a set of channel ids that must be active together (connected by unions). A
*group* is a set of classes that share one width budget: classes that sit next to each other
in one producer's output (a conv's channels) belong to one group unless a split cut them apart.
Groups are the connected components of a networkx graph over classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from slimify.analysis.space import FIXED, UNREAD_OUTPUT_REASON, ChannelSpace
from slimify.analysis.unique import unique, unique_counts

__all__ = ["ChannelGroup", "GroupTable", "find_groups", "connected_labels"]


@dataclass
class ChannelGroup:
    """Channels slimmed together: ``classes`` in rank order (the prefix is kept first)."""

    index: int
    classes: np.ndarray  # class labels, rank order
    unit: int  # channels per class in the group's producers (head_dim for heads, 1 usually)
    fixed: bool
    reason: str = ""
    origins: list[str] = field(default_factory=list)  # producers, for the report

    @property
    def size(self) -> int:
        return len(self.classes) * self.unit


@dataclass
class GroupTable:
    class_of: np.ndarray  # id → class label
    group_of_class: dict[int, int]
    rank: np.ndarray  # id → rank of its class inside its group
    group_of_id: np.ndarray  # id → group index, -1 for ids in no group
    groups: list[ChannelGroup]


def connected_labels(size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Union-find by hooking and pointer jumping, vectorised: label = smallest id of the set."""
    parent = np.arange(size, dtype=np.int64)
    while a.size:
        la, lb = parent[a], parent[b]
        differ = la != lb
        if not differ.any():
            break
        la, lb = la[differ], lb[differ]
        low = np.minimum(la, lb)
        np.minimum.at(parent, la, low)
        np.minimum.at(parent, lb, low)
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        a, b = a[differ], b[differ]
    return parent


def find_groups(space: ChannelSpace) -> GroupTable:
    a, b = space.pairs()
    class_of = connected_labels(space.size, a, b)
    var_of = np.full(space.size, -1, np.int64)
    pos = np.zeros(space.size, np.int64)
    for i, v in enumerate(space.vars):
        var_of[v.start:v.start + v.size] = i
        pos[v.start:v.start + v.size] = np.arange(v.size)
    producer = np.zeros(space.size, bool)
    for v in space.vars:
        if v.producer:
            producer[v.start:v.start + v.size] = True

    fixed_reason: dict[int, str] = {}
    for ids, reason in space.fixes + _unread_outputs(space, class_of):
        for c in unique(class_of[ids]).tolist():
            fixed_reason.setdefault(c, reason)
    seen = np.zeros(space.size, bool)
    if space.seen:
        seen[np.concatenate(space.seen)] = True

    key = np.full(space.size, np.iinfo(np.int64).max, np.int64)
    prod_ids = np.nonzero(producer)[0]
    np.minimum.at(key, class_of[prod_ids], pos[prod_ids])

    groups: list[ChannelGroup] = []
    group_of_class: dict[int, int] = {}
    fixed_class = int(class_of[FIXED])
    for classes in _linked_classes(space, class_of, var_of, producer):
        classes = classes[np.lexsort((classes, key[classes]))]  # rank order: position in the producers
        gi = len(groups)
        reasons = [fixed_reason[c] for c in classes.tolist() if c in fixed_reason]
        if not reasons and fixed_class in set(classes.tolist()):
            reasons = ["joined with channels that cannot slim"]
        groups.append(ChannelGroup(gi, classes, 1, bool(reasons), reasons[0] if reasons else ""))
        group_of_class.update(dict.fromkeys(classes.tolist(), gi))

    class_group = np.full(space.size, -1, np.int64)
    rank_of_class = np.zeros(space.size, np.int64)
    for g in groups:
        class_group[g.classes] = g.index
        rank_of_class[g.classes] = np.arange(len(g.classes))
    group_of_id = class_group[class_of]
    rank = rank_of_class[class_of]
    _set_units_and_origins(space, groups, group_of_id, class_of, var_of, producer, seen)
    return GroupTable(class_of, group_of_class, rank, group_of_id, groups)


def _unread_outputs(space: ChannelSpace, class_of: np.ndarray) -> list[tuple[np.ndarray, str]]:
    """Output channels no layer inside the model reads keep their size (``ChannelSpace.pad_output``)."""
    if space.output_ids is None:
        return []
    read = class_of[np.concatenate(space.read)] if space.read else np.zeros(0, np.int64)
    unread = space.output_ids[~np.isin(class_of[space.output_ids], read) & (space.output_ids != FIXED)]
    return [(unread, UNREAD_OUTPUT_REASON)] if unread.size else []


def _linked_classes(space: ChannelSpace, class_of: np.ndarray, var_of: np.ndarray,
                    producer: np.ndarray) -> list[np.ndarray]:
    """Classes that sit next to each other in one producer's output share a group, unless a
    split point cuts them apart. The networkx graph is over *segments* (uncut runs of one
    producer's channels) linked where they share a class: a few hundred nodes instead of one per
    channel, the same connected components."""
    size = space.size
    ids = np.nonzero(producer)[0]
    ids = ids[ids > 0]
    if not ids.size:
        return []
    here, after = ids[:-1], ids[:-1] + 1
    cut = (var_of[here] != var_of[after]) | ~producer[after]  # the next id is another producer's
    if space.cuts:
        lo = class_of[np.concatenate([c[0] for c in space.cuts])]
        hi = class_of[np.concatenate([c[1] for c in space.cuts])]
        cut_keys = unique(np.minimum(lo, hi) * size + np.maximum(lo, hi))
        a, b = class_of[here], class_of[after]
        cut |= np.isin(np.minimum(a, b) * size + np.maximum(a, b), cut_keys)
    segment = np.concatenate([[0], np.cumsum(cut)])  # segment of each producer id
    n_segments = int(segment[-1]) + 1
    first_segment = np.full(size, n_segments, np.int64)
    np.minimum.at(first_segment, class_of[ids], segment)
    links = unique(segment * n_segments + first_segment[class_of[ids]])
    graph = nx.Graph()
    graph.add_nodes_from(range(n_segments))
    graph.add_edges_from(zip((links // n_segments).tolist(), (links % n_segments).tolist()))
    component = np.empty(n_segments, np.int64)
    for k, members in enumerate(nx.connected_components(graph)):
        component[list(members)] = k
    classes = unique(class_of[ids])
    comp_of_class = component[first_segment[classes]]
    order = np.argsort(comp_of_class, kind="stable")
    bounds = np.nonzero(np.diff(comp_of_class[order]))[0] + 1
    return sorted(np.split(classes[order], bounds), key=lambda c: int(c.min()))  # numbered as before


def _set_units_and_origins(space: ChannelSpace, groups: list[ChannelGroup], group_of_id: np.ndarray,
                           class_of: np.ndarray, var_of: np.ndarray, producer: np.ndarray,
                           seen: np.ndarray) -> None:
    """unit = channels per class in most producers of the group (1 for plain channels,
    head_dim for attention heads, channels per group for grouped convs)."""
    ids = np.nonzero(producer & (group_of_id >= 0))[0]
    n_vars = len(space.vars) + 1
    gv = group_of_id[ids] * n_vars + var_of[ids]  # one int key per (group, var)
    keys, counts = unique_counts(gv)
    distinct = unique(gv * class_of.size + class_of[ids])
    _, n_classes = unique_counts(distinct // class_of.size)
    units: dict[int, list[int]] = {}
    for key, n_ids, n_cls in zip(keys.tolist(), counts.tolist(), n_classes.tolist()):
        gi, vi = divmod(key, n_vars)
        units.setdefault(gi, []).append(max(1, n_ids // n_cls))
        groups[gi].origins.append(space.vars[vi].origin)
    seen_groups = set(unique(group_of_id[seen & (group_of_id >= 0)]).tolist())
    for grp in groups:  # the most common producer's unit: a per-head table (1 per head) is not the stream's
        found = units.get(grp.index, [1])
        grp.unit = max(sorted(set(found), reverse=True), key=found.count)
        if not grp.fixed and grp.index not in seen_groups:
            grp.fixed, grp.reason = True, "only parameters, no activation uses these channels"


def cut_around(space: ChannelSpace, table: GroupTable, ids: np.ndarray) -> None:
    """Give the classes of ``ids`` a group of their own: a cut wherever one of them sits next to
    a class outside them in some producer's output (``ChannelSpace.cut``)."""
    member = np.isin(table.class_of, unique(table.class_of[np.asarray(ids, np.int64)]))
    for v in space.vars:
        if v.producer and v.size > 1:
            here = np.arange(v.start, v.start + v.size - 1)
            edge = here[member[here] != member[here + 1]]
            if edge.size:
                space.cut(edge, edge + 1)
