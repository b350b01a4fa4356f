"""Put each channel group's most important channels first, so a narrow prefix of a pretrained
network starts from its best channels (slimmable training does this by construction).

One permutation per channel group is applied to *every* tensor that carries the group's
channels: producers' outputs, consumers' inputs, norms and their running statistics, parameters
read by forward code. Channels are moved by identity, not by position: the content of the class
at old rank ``r`` moves to wherever the class of new rank ``r`` sat, in each tensor and at each
of its positions there. Concatenated segments therefore keep their offsets, and a class with
several channels (an attention head, a block of a grouped conv) moves as a whole. The network
computes the same function; only which channels a prefix keeps changes. Ranks come from
positions, so the analysis and plan computed before reordering stay valid.

    >>> model = torchvision.models.resnet18()
    >>> result = slimify.reorder(model, "l1", example_input=torch.randn(1, 3, 64, 64))
    >>> result.moved > 0
    True
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from slimify.analysis.example_inputs import default_input
from slimify.analysis.groups import GroupTable
from slimify.analysis.space import ChannelSpace
from slimify.analysis.stages import Analysis, analyze_model
from slimify.analysis.unique import unique
from slimify.check.selfcheck import self_check
from slimify.errors import SlimifyError
from slimify.ordering.registry import SCORES, class_scores
from slimify.ordering.scores import as_loader, tensor_of
from slimify.state import is_slimmable

__all__ = ["reorder", "Reordering"]

CHECK_TOLERANCE = 1e-4  # full-width outputs may differ by this much (relative to max |y|), else revert


@dataclass
class Reordering:
    """What :func:`reorder` did.

    ``orders[g][r]`` is the old rank of the class that now has rank ``r`` in group ``g``;
    ``scores[g]`` the importance of the group's classes in their new order (non-increasing).
    """

    method: str
    orders: dict[int, np.ndarray] = field(default_factory=dict)
    scores: dict[int, np.ndarray] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)  # group → why it kept its order
    max_change: float = 0.0  # relative max |Δ| of the full-width output on the example input

    @property
    def moved(self) -> int:
        """Number of groups whose order changed."""
        return sum(1 for g, order in self.orders.items() if g not in self.skipped
                   and not np.array_equal(order, np.arange(len(order))))


    @property
    def tied(self) -> int:
        """Number of groups whose scores are all equal (nothing to rank by: a fresh BatchNorm's |gamma|)."""
        return sum(1 for scores in self.scores.values() if len(scores) and np.ptp(scores) == 0)


class _Irregular(Exception):
    """Some groups' channels sit in a tensor in a pattern a class permutation cannot follow."""

    def __init__(self, groups: np.ndarray, where: str) -> None:
        super().__init__(where)
        self.groups, self.where = groups, where


def _in_class_rank(class_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each id among the ids of its class (by id), and each class's size."""
    ids = np.arange(len(class_of))
    order = np.lexsort((ids, class_of))
    sorted_cls = class_of[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_cls))[0] + 1]
    lengths = np.diff(np.r_[starts, len(order)])
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order)) - np.repeat(starts, lengths)
    size = np.zeros(len(class_of), np.int64)
    np.add.at(size, class_of, 1)
    return rank, size


def gather_index(labels: np.ndarray, class_of: np.ndarray, in_rank: np.ndarray,
                 source: np.ndarray) -> np.ndarray | None:
    """Index ``i`` such that ``new[p] = old[i[p]]`` along a dim labelled ``labels`` (or None: unchanged).

    Position ``p`` holds id ``x`` of class ``c``; it receives the channel of class
    ``source[c]`` with the same rank inside its class, at the same occurrence (ids repeat when
    a flatten maps one channel to many features).
    """
    labels = np.asarray(labels, np.int64).ravel()
    cls = class_of[labels]
    target = source[cls]
    if np.array_equal(target, cls):
        return None
    n, span = len(labels), int(in_rank.max()) + 1
    code = cls * span + in_rank[labels]  # (class, rank inside the class) as one number
    order = np.argsort(code, kind="stable")
    sorted_code = code[order]
    starts = np.r_[0, np.nonzero(np.diff(sorted_code))[0] + 1]
    occurrence = np.empty(n, np.int64)
    occurrence[order] = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    want = target * span + in_rank[labels]
    at = np.searchsorted(sorted_code, want)  # first position of the wanted (class, rank)
    at = np.minimum(at + occurrence, n - 1)
    found = (sorted_code[at] == want) & (occurrence[order[at]] == occurrence)
    if not found.all():
        raise _Irregular(cls[~found], "")
    index = order[at]
    if len(unique(index)) != n:  # classes occur unequally often here: not a permutation
        raise _Irregular(cls[target != cls], "")
    return index


def _tensor_moves(model: nn.Module, space: ChannelSpace) -> list[tuple[str, torch.Tensor, dict[int, np.ndarray] | None,
                                                                     np.ndarray | None]]:
    """(name, tensor, per-dim ids, elementwise labels) for every tensor carrying channels, once each."""
    moves, seen = [], set()
    for (path, name), spec in space.params.items():
        t = tensor_of(model, path, name)
        if t is not None and id(t) not in seen:
            seen.add(id(t))
            moves.append((f"{path}.{name}", t, spec.dims or None, spec.elementwise))
    for bn in space.batchnorms:
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = tensor_of(model, bn.module, name)
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                moves.append((f"{bn.module}.{name}", t, {0: bn.ids}, None))
    return moves


def _plan_moves(moves: list, table: GroupTable, in_rank: np.ndarray, source: np.ndarray) -> list:
    """Per tensor: per-dim gather indices and a flat (elementwise) one. Raises :class:`_Irregular`."""
    planned = []
    for name, t, dims, elementwise in moves:
        try:
            per_dim = {d: gather_index(ids, table.class_of, in_rank, source) for d, ids in (dims or {}).items()}
            per_dim = {d: i for d, i in per_dim.items() if i is not None}
            flat = None if elementwise is None else gather_index(elementwise, table.class_of, in_rank, source)
        except _Irregular as e:
            raise _Irregular(e.groups, name) from None
        if flat is not None and per_dim:  # both uses must agree on how the elements move
            base = np.arange(t.numel()).reshape(tuple(t.shape))
            for d, index in per_dim.items():
                base = np.take(base, index, axis=d)
            if not np.array_equal(base.ravel(), flat):
                raise _Irregular(table.class_of[np.asarray(elementwise).ravel()], name)
            per_dim = {}
        if per_dim or flat is not None:
            planned.append((t, per_dim, flat))
    return planned


def _apply(planned: list, inverse: bool = False) -> None:
    """Gather every planned tensor in place (``inverse``: undo a previous :func:`_apply`)."""
    with torch.no_grad():
        for t, per_dim, flat in planned:
            new = t.detach()
            for d, index in per_dim.items():
                index = np.argsort(index) if inverse else index
                new = new.index_select(d, torch.as_tensor(index, dtype=torch.long, device=t.device))
            if flat is not None:
                index = torch.as_tensor(np.argsort(flat) if inverse else flat, dtype=torch.long, device=t.device)
                new = new.reshape(-1)[index].reshape(t.shape)
            t.copy_(new)


def _orders(table: GroupTable, scores: np.ndarray, result: Reordering, space: ChannelSpace) -> None:
    _, size = _in_class_rank(table.class_of)
    ordered = _ordered_groups(table, space)
    for g in table.groups:
        if g.fixed or len(g.classes) < 2:
            continue
        s = scores[g.classes]
        order = np.argsort(-s, kind="stable")  # ties keep their old order
        result.orders[g.index], result.scores[g.index] = order, s[order]
        if len(unique(size[g.classes])) > 1:
            result.skipped[g.index] = "its channel classes differ in size"
        elif g.index in ordered:
            result.skipped[g.index] = ordered[g.index]


def _ordered_groups(table: GroupTable, space: ChannelSpace) -> dict[int, str]:
    """Groups matched by position (a chunk that splits whatever is active, features the model
    returns and its caller reads by position): group → why."""
    found: dict[int, str] = {}
    returned = [] if space.output_ids is None else [(space.output_ids, "the model returns these features in this order")]
    for ids, reason in space.ordered + returned:
        for g in unique(table.group_of_id[ids]).tolist():
            if g >= 0:
                found.setdefault(g, f"its channels are matched by position ({reason})")
    return found


def _source(table: GroupTable, result: Reordering) -> np.ndarray:
    """source[c] = the class whose channels move into class c's places."""
    source = np.arange(len(table.class_of))
    for g, order in result.orders.items():
        if g not in result.skipped:
            classes = table.groups[g].classes
            source[classes] = classes[order]
    return source


def permute_groups(model: nn.Module, analysis: Analysis, result: Reordering) -> list:
    """Move the channels of every group in ``result.orders`` (skipping groups it cannot follow);
    returns what moved, for :func:`_apply` ``(..., inverse=True)``."""
    table = analysis.table
    in_rank, _ = _in_class_rank(table.class_of)
    moves = _tensor_moves(model, analysis.space)
    while True:
        try:
            planned = _plan_moves(moves, table, in_rank, _source(table, result))
            break
        except _Irregular as e:
            groups = unique(table.group_of_id[e.groups])
            bad = [int(g) for g in groups if g in result.orders and g not in result.skipped]
            if not bad:
                raise SlimifyError(f"reorder: cannot permute {e.where} consistently") from None
            for g in bad:
                result.skipped[g] = f"its channels sit irregularly in {e.where}"
    _apply(planned)
    return planned


def _output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(x)
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out.detach().float().clone()


def _permute_checked(model: nn.Module, analysis: Analysis, result: Reordering, example: torch.Tensor) -> None:
    """Permute, and undo it (with a warning) if the full-width output on ``example`` changed."""
    was_training = model.training
    model.eval()
    try:
        before = _output(model, example)
        planned = permute_groups(model, analysis, result)
        after = _output(model, example)
    finally:
        model.train(was_training)
    result.max_change = float((after - before).abs().max()) / (float(before.abs().max()) or 1.0)
    if not result.max_change <= CHECK_TOLERANCE:
        _apply(planned, inverse=True)
        warnings.warn(f"reorder changed {type(model).__name__}'s outputs (relative max |Δ| "
                      f"{result.max_change:.2e}); its channels keep their original order", stacklevel=3)
        result.skipped = {g: "reverted: outputs changed" for g in result.orders}


def reorder(model: nn.Module, method: str = "l1", data: Any = None, analysis: Analysis | None = None, *,
            example_input: torch.Tensor | None = None, batches: int = 8, check: bool = True) -> Reordering:
    """Permute each slimmable channel group of the *unconverted* ``model`` in place so its most
    important channels come first (``method``: a score of ``ordering/registry.py``: "l1", "l2", "bn",
    "taylor"…; ``data`` yields a few batches of inputs or (inputs, targets) for scores that need
    data, such as "taylor", at most ``batches`` of them).

    ``analysis`` is reused when given (``convert(..., reorder=...)`` passes its own), else the
    model is analysed on ``example_input``. With ``check``, the full-width output on the example
    input is compared before and after; a difference undoes the permutation and warns (that
    would be an analysis bug, never a reason to return a changed network).
    """
    SCORES.get(method)  # an unknown name fails here, before any work
    if not isinstance(model, nn.Module):
        raise SlimifyError(f"reorder needs a torch.nn.Module, got {type(model).__name__}")
    if is_slimmable(model):
        raise SlimifyError(f"{type(model).__name__} is already slimmable: reorder the plain model before "
                           "converting, or use slimify.convert(model, reorder=...)")
    if example_input is None and isinstance(data, (torch.utils.data.Dataset, list, tuple)):
        example_input = _first_input(data)
    example = default_input(model) if example_input is None else example_input
    if analysis is None:
        analysis = analyze_model(model, example_input=example, check=self_check)  # the groups convert would find
    result = Reordering(method)
    _orders(analysis.table, class_scores(model, analysis.space, analysis.table, method, data, batches), result,
            analysis.space)
    if check:
        _permute_checked(model, analysis, result, example)
    else:
        permute_groups(model, analysis, result)
    return result


def _first_input(data: Any) -> torch.Tensor | None:
    for batch in as_loader(data):
        x = batch if isinstance(batch, torch.Tensor) else batch[0]
        return x[:1]
    return None
