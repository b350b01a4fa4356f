"""Channel ids and the constraints between them, collected while the rules walk the graph.

Every channel a layer produces gets an integer id. A tensor's *label* is an int array with
the tensor's number of dims, holding for each element the id of the channel it belongs to;
dims along which the id does not change are collapsed to size 1 (so labels stay small).
Id 0 is reserved: it means "a channel that never slims" (model inputs, unknown ops).

Rules only *record* constraints here (unions, fixes, cuts); connected components are found
once at the end (see ``groups.py``), so analysis stays linear in graph size.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from slimify.analysis.unique import unique

__all__ = ["FIXED", "OUTPUT_REASON", "UNREAD_OUTPUT_REASON", "Var", "Count", "ParamSpec", "AttrSpec", "BatchNormSpec",
           "SizeCondition", "ChannelSpace"]

FIXED = 0  # id of the "never slims" channel
_DISTINCT_PAIRS_ABOVE = 1 << 18  # a union this large keeps each pair once (``ChannelSpace._distinct``)
_CODES_BELOW = 1 << 31  # ids below this: a pair coded as one int64 (a * size + b) cannot overflow
OUTPUT_REASON = "model output (classifier outputs keep their size)"
UNREAD_OUTPUT_REASON = "model output that no layer inside the model reads (logits, a final projection)"


@dataclass(frozen=True)
class Var:
    """A run of fresh ids made by one producer (a conv's output channels, a parameter)."""

    start: int
    size: int
    origin: str  # human-readable: which node/module made these channels
    producer: bool  # True for layer outputs; False for parameters read in forward code


@dataclass(frozen=True)
class Count:
    """Placeholder for "how many of these channels are active" (divided by ``unit``)."""

    ids: np.ndarray
    unit: int = 1


@dataclass
class ParamSpec:
    """A parameter or buffer to serve narrow: for each sliced dim, the ids along it.

    ``elementwise`` labels hold one id per element instead (parameters read directly by
    forward code, e.g. position embeddings); the plan turns them into per-dim index sets.
    """

    module: str
    name: str
    dims: dict[int, np.ndarray] = field(default_factory=dict)
    elementwise: np.ndarray | None = None


@dataclass
class AttrSpec:
    """A plain module attribute that forward code reads (``num_heads``, ``splits``…) and that
    must follow the width: ``template`` is the value with :class:`Count` in place of sizes."""

    module: str
    name: str
    template: object
    origin: str


@dataclass
class SizeCondition:
    """A branch forward code took on a size of slimming channels compared with a literal
    (``if skip.shape[1] != 0:``): ``decide(active(ids) · num // den)`` must give ``taken`` at every
    switch, or the narrow network would take another path; the plan checks it per switch."""

    ids: np.ndarray
    num: int
    den: int
    decide: Callable[[int], bool]  # the comparison, with the literal bound
    taken: bool  # its answer on the example (full width)
    reason: str

    def holds(self, active: np.ndarray) -> bool:
        return bool(self.decide(int(active[self.ids].sum()) * self.num // self.den)) == self.taken


@dataclass
class BatchNormSpec:
    """A BatchNorm that becomes switchable: private statistics and affine per switch."""

    module: str
    ids: np.ndarray


class ChannelSpace:
    """Allocates channel ids and records the constraints the rules find."""

    def __init__(self) -> None:
        self.size = 1  # id 0 is FIXED
        self.vars: list[Var] = []
        self._pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.pair_contexts: list[str] = []  # the node each union was recorded at (``analysis/full_width.py``)
        self.fixes: list[tuple[np.ndarray, str]] = []
        self.cuts: list[tuple[np.ndarray, np.ndarray]] = []  # (left, right) ids of split points
        self.balances: list[list[np.ndarray]] = []  # equal pieces that must keep equal widths
        self.seen: list[np.ndarray] = []  # ids that appear in activations (not just parameters)
        self.params: dict[tuple[str, str], ParamSpec] = {}
        self.attrs: dict[tuple[str, str], AttrSpec] = {}
        self.batchnorms: list[BatchNormSpec] = []
        self.context = ""  # description of the node being analysed, for reasons
        # chunk by position (see rules/segments.py): set by the caller before the rules run
        self.positional_chunks = False
        self.common_counts = False  # plan: balances across groups of different units by a common multiple
        self.ordered: list[tuple[np.ndarray, str]] = []  # ids whose channels must keep their order
        # a feature output (see ``pad_output``) and the ids that layers with parameters read
        self.output_ids: np.ndarray | None = None
        self.output_layout: list[tuple[int, int, int]] = []  # per padded output tensor: (index, dim, size)
        self.read: list[np.ndarray] = []
        self.size_conditions: list[SizeCondition] = []  # branches on sizes, checked per switch by the plan

    # -- allocation ---------------------------------------------------------------------
    def new_var(self, size: int, origin: str, producer: bool = True) -> np.ndarray:
        ids = np.arange(self.size, self.size + size, dtype=np.int64)
        self.vars.append(Var(self.size, size, origin, producer))
        self.size += size
        return ids

    # -- constraints -------------------------------------------------------------------
    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Elements at the same (broadcast) position must be active together."""
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        a, b = a.ravel(), b.ravel()
        keep = a != b
        if not keep.any():
            return
        a, b = a[keep], b[keep]
        if a.size > _DISTINCT_PAIRS_ABOVE and self.size < _CODES_BELOW:
            a, b = self._distinct(a, b)
        touches_fixed = (a == FIXED) | (b == FIXED)
        if touches_fixed.any():
            self.fix(np.concatenate([a[touches_fixed], b[touches_fixed]]),
                     f"joined with a channel that cannot slim at {self.context}")
        self._pairs.append((a, b))
        self.pair_contexts.append(self.context)

    def _distinct(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each pair once. A label spread over positions (a detector head's anchors x classes,
        reshaped into one dim with the spatial positions) repeats every pair thousands of times:
        RetinaNet's box split gave 10.9 M pairs, 4,095 of them distinct, and the kept copies cost
        more in ``pairs`` and ``groups.connected_labels`` than finding the distinct ones does. Where
        every ``b`` has one partner (the usual case: a row of a label tied to its first id), they are
        found without a sort; else by one sort of the pairs coded as one int64."""
        partner = np.full(self.size, -1, np.int64)
        partner[b] = a  # one of each b's partners
        if np.array_equal(partner[b], a):  # each b has only that one: (partner[b], b) are the distinct pairs
            bs = np.flatnonzero(partner >= 0)
            return partner[bs], bs
        codes = unique(a * self.size + b)  # every id is below self.size
        return codes // self.size, codes % self.size

    def pair_records(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every union as recorded, in order (``pair_contexts`` says where)."""
        return self._pairs

    def union_all(self, ids: np.ndarray) -> None:
        """All these ids are one unit (a head, a group of a grouped conv)."""
        flat = np.asarray(ids).ravel()
        if flat.size > 1:
            self.union(flat[:1], flat[1:])

    def union_slabs(self, label: np.ndarray, axis: int) -> None:
        """Every slab ``label[..., j, ...]`` along ``axis`` becomes one unit."""
        moved = np.moveaxis(label, axis, 0).reshape(label.shape[axis], -1)
        if moved.shape[1] > 1:
            self.union(moved[:, :1], moved)

    def fix(self, ids: np.ndarray, reason: str) -> None:
        ids = unique(np.asarray(ids).ravel())
        ids = ids[ids != FIXED]
        if ids.size:
            self.fixes.append((ids, reason))

    def cut(self, left: np.ndarray, right: np.ndarray) -> None:
        """A split point between neighbouring channels: the pieces get widths of their own."""
        self.cuts.append((np.asarray(left, np.int64).ravel(), np.asarray(right, np.int64).ravel()))

    def balance(self, pieces: list[np.ndarray]) -> None:
        """Equal pieces (``chunk``) must keep equally many channels at every width."""
        self.balances.append([np.asarray(p, np.int64) for p in pieces])

    def keep_order(self, ids: np.ndarray, reason: str) -> None:
        """These channels are matched by position, not identity: reordering must leave them."""
        self.ordered.append((np.asarray(ids, np.int64).ravel(), reason))

    def pad_output(self, ids: np.ndarray, layout: list[tuple[int, int, int]] | None = None) -> None:
        """The model returns one tensor whose last dim holds these channels (``layout`` None), or a
        list/tuple of feature maps, each with its channels along one dim (``layout``: per map, its
        index in the output, that dim and its size; ``ids`` concatenated in that order). Channels
        that layers inside the model also read (a residual stream returned as features) may slim:
        narrow switches pad the output back to full size with zeros. The others (logits, a final
        projection made only for the caller) keep their size: ``groups.py`` fixes them."""
        self.output_ids = np.asarray(ids, np.int64).ravel()
        self.output_layout = layout or [(0, -1, len(self.output_ids))]

    def mark_read(self, label: np.ndarray) -> None:
        """A layer with parameters reads these channels (see ``pad_output``)."""
        self.read.append(np.asarray(label, np.int64).ravel())

    def mark_seen(self, label: np.ndarray) -> None:
        """These ids appear in an activation. Small labels are kept as they are (a ``np.unique``
        per node cost ~2 ms a conversion); only large ones are deduplicated."""
        label = np.asarray(label)
        if label.size <= 4096:
            self.seen.append(label.ravel())
        elif label.size * 4 < self.size:
            self.seen.append(unique(label))
        else:  # a label as large as the space (a detector head's, millions of ids): a mask, not a sort
            mask = np.zeros(self.size, bool)
            mask[label.ravel()] = True
            self.seen.append(np.flatnonzero(mask))

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._pairs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return (np.concatenate([p[0] for p in self._pairs]), np.concatenate([p[1] for p in self._pairs]))

    # -- specs for the rewrite ----------------------------------------------------------
    def param(self, module: str, name: str, dims: dict[int, np.ndarray] | None = None,
              elementwise: np.ndarray | None = None) -> None:
        key = (module, name)
        spec = self.params.get(key)
        if spec is None:
            self.params[key] = ParamSpec(module, name, dict(dims or {}), elementwise)
            return
        for dim, ids in (dims or {}).items():  # a parameter used twice: both uses must agree
            if dim in spec.dims:
                self.union(spec.dims[dim], ids)
            else:
                spec.dims[dim] = ids
        if elementwise is not None:
            if spec.elementwise is None:
                spec.elementwise = elementwise
            else:
                self.union(spec.elementwise, elementwise)

    def attr(self, module: str, name: str, template: object) -> None:
        self.attrs.setdefault((module, name), AttrSpec(module, name, template, self.context))

    def batchnorm(self, module: str, ids: np.ndarray) -> None:
        self.batchnorms.append(BatchNormSpec(module, ids))
