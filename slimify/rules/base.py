"""What a rule sees: analysed values of its inputs and a context to record constraints in."""
from __future__ import annotations

import linecache
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx
import torch.nn as nn

from slimify.analysis.shape_pass import SHAPE_KEY, WHERE_KEY
from slimify.analysis.space import FIXED, ChannelSpace

__all__ = ["TensorVal", "ParamVal", "RuleContext", "FunctionRule", "tensors_in", "collapse"]

PARAM_ELEMENT_LIMIT = 1 << 22  # parameters read by forward code get one id per element up to this size


@dataclass
class TensorVal:
    """A tensor during analysis: its real shape and its channel label (see ``space.py``).

    ``rigid`` dims keep their size at every width although they carry ids (e.g. the head_dim
    of a ``(B, N, heads, head_dim)`` view): indexing them with constants stays valid.
    """

    label: np.ndarray
    shape: tuple[int, ...]
    rigid: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        self.label = collapse(self.label)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def carries(self, dim: int) -> bool:
        """Whether the size along ``dim`` can change with the width."""
        return self.label.shape[dim] > 1 and dim not in self.rigid

    def expanded(self, dims: Iterable[int]) -> np.ndarray:
        """The label with ``dims`` broadcast to their real size."""
        target = list(self.label.shape)
        for d in dims:
            target[d] = self.shape[d]
        return np.broadcast_to(self.label, target)


def collapse(label: np.ndarray) -> np.ndarray:
    """``label`` with every dim along which its ids do not change cut to size 1: a dim "carries"
    channels only if ids differ along it (a broadcast or a reshape may spread one id over many)."""
    label = np.asarray(label)
    for d in range(label.ndim):
        if label.shape[d] > 1:
            first = label[(slice(None),) * d + (slice(0, 1),)]
            if (label == first).all():
                label = first
    return label


@dataclass
class ParamVal:
    """A parameter or buffer read by forward code (an fx ``get_attr``), labelled lazily: rules
    for functional linear/conv use it as a weight; anything else gets one id per element."""

    module: str
    name: str
    tensor: torch.Tensor


def tensors_in(value: Any) -> Iterator[TensorVal | ParamVal]:
    if isinstance(value, (TensorVal, ParamVal)):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_in(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v)


class RuleContext:
    """Per-node helpers shared by all rules."""

    def __init__(self, space: ChannelSpace, root: nn.Module) -> None:
        self.space = space
        self.root = root
        self.node: fx.Node | None = None
        self.module: nn.Module | None = None  # the module a module rule runs for, and its path
        self.path = ""
        self.leaves: frozenset[str] = frozenset()  # module paths whose tracing failed (traced on their own)
        self._param_labels: dict[tuple[str, str], TensorVal] = {}
        self.values: dict[fx.Node, Any] = {}  # analysed value of every node so far (filled by analyze)
        self._producer = np.zeros(1, bool)  # id → made by a layer (not a parameter element)
        self._vars_seen = 0

    # -- node facts ---------------------------------------------------------------------
    def begin(self, node: fx.Node) -> None:
        self.node = node
        self.space.context = describe_node(node)

    @property
    def out_shape(self) -> Any:  # SHAPE_KEY imported once: a ``from`` import here cost ~10 µs a read
        return self.node.meta.get(SHAPE_KEY)

    def owner_paths(self) -> list[str]:
        """Module paths whose forward code this node belongs to, innermost first."""
        stack = self.node.meta.get("nn_module_stack") or {}
        paths = [v[0] if isinstance(v, tuple) else v for v in stack.values()]
        return [p for p in reversed(paths)] + ([""] if "" not in paths else [])

    # -- values ---------------------------------------------------------------------------
    def tensor(self, value: TensorVal | ParamVal) -> TensorVal:
        if isinstance(value, TensorVal):
            return value
        key = (value.module, value.name)
        if key not in self._param_labels:
            self._param_labels[key] = self._label_param(value)
        return self._param_labels[key]

    def _label_param(self, p: ParamVal) -> TensorVal:
        shape = tuple(p.tensor.shape)
        if not p.tensor.is_floating_point():
            return TensorVal(np.zeros([1] * len(shape), np.int64), shape)
        if p.tensor.numel() > PARAM_ELEMENT_LIMIT:
            label = np.zeros([1] * len(shape), np.int64)
            self.space.fix(label, f"{p.module}.{p.name} is a large tensor read directly by forward code")
            return TensorVal(label, shape)
        ids = self.space.new_var(p.tensor.numel(), f"{p.module or '<model>'}.{p.name}", producer=False)
        label = ids.reshape(shape) if shape else ids.reshape(())
        self.space.param(p.module, p.name, elementwise=label)
        return TensorVal(label, shape)

    def is_table(self, label: np.ndarray) -> bool:
        """Whether ``label`` holds no layer output channel: parameter elements (a rotary or
        relative-position table) or fixed ids only."""
        vars_ = self.space.vars
        if self._vars_seen < len(vars_) or self._producer.size < self.space.size:
            grown = np.zeros(self.space.size, bool)
            grown[: self._producer.size] = self._producer[: self.space.size]
            for v in vars_[self._vars_seen:]:
                grown[v.start:v.start + v.size] = v.producer
            self._producer, self._vars_seen = grown, len(vars_)
        return not self._producer[label.ravel()].any()

    def shared_across(self, labels: list[np.ndarray], reals: list[tuple[int, ...]], rigid: set[int]) -> list[bool]:
        """For operands aligned on common dims: which are one table (or one value) used by
        every channel of another operand — they span none of the dims along which the others'
        channels shrink. Such an operand keeps its size and must tie no channels together."""
        shared = []
        for i, (lab, real) in enumerate(zip(labels, reals)):
            others = {d for j, o in enumerate(labels) if j != i for d in range(o.ndim) if o.shape[d] > 1} - rigid
            spans = any(real[d] > 1 for d in others)
            shared.append(bool(others) and not spans and (lab.size == 1 or self.is_table(lab)))
        return shared

    def fixed(self, shape: tuple[int, ...]) -> TensorVal:
        """A tensor whose channels never slim (inputs, results of ops without rules)."""
        return TensorVal(np.zeros([1] * len(shape), np.int64), tuple(shape))

    def channel_ids(self, x: TensorVal, dim: int) -> np.ndarray:
        """One id per index along ``dim``; ids that differ along other dims are unified, since
        one input channel of a layer is active or not as a whole."""
        lab = x.expanded([dim])
        if lab.size == lab.shape[dim] > 0:  # no other dim carries ids (a conv's input): the ids as they are
            return lab.reshape(-1).copy()
        moved = np.moveaxis(lab, dim, 0).reshape(x.shape[dim], -1)
        if moved.shape[1] > 1:
            self.space.union(moved[:, :1], moved)
        return moved[:, 0].copy()

    def with_dim(self, x: TensorVal, dim: int, ids: np.ndarray, shape: tuple[int, ...]) -> TensorVal:
        """A label like ``x``'s but with ``ids`` along ``dim`` (other dims collapsed)."""
        target = [1] * len(shape)
        target[dim] = len(ids)
        return TensorVal(np.asarray(ids).reshape(target), tuple(shape))

    def fix_all(self, values: Iterable[Any], why: str) -> None:
        for v in values:
            for t in tensors_in(v):
                key = (t.module, t.name) if isinstance(t, ParamVal) else None
                if key is not None and key not in self._param_labels:  # never served narrow: no ids needed
                    self._param_labels[key] = self.fixed(tuple(t.tensor.shape))
                    continue
                self.space.fix(self.tensor(t).label, why)


FunctionRule = Callable[[RuleContext, list[Any], dict[str, Any]], Any]  # every rule's signature


def describe_node(node: fx.Node) -> str:
    """``node 'add_3' (operator.add) in layer1.0 [file, line N, in fn: code]``: where the model's
    code made it (see ``trace.WHERE_KEY``)."""
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    stack = node.meta.get("nn_module_stack") or {}
    where = ""
    if stack:
        last = list(stack.values())[-1]
        where = f" in {last[0] if isinstance(last, tuple) else last}"
    text = f"node '{node.name}' ({node.op} {target}){where}"
    line = node.meta.get(WHERE_KEY)
    if line:
        filename, lineno, function = line
        text += f" [{filename}, line {lineno}, in {function}: {linecache.getline(filename, lineno).strip()}]"
    return text


def is_fixed_label(label: np.ndarray) -> bool:
    return bool((label == FIXED).all())
