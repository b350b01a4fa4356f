"""Run a plan's switches on a *skeleton* of the model: its module tree copied shallowly (the
copy's own dicts; its tensors empty on the meta device, or the user's own when the model cannot
run on meta), rewritten with the plan. What the self-check (``selfcheck.py``) runs; the user's
model is never written."""
from __future__ import annotations

import contextlib
import dataclasses
import linecache
import traceback
import types
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_map

from slimify.analysis.containers import copy_container
from slimify.analysis.example_inputs import ExampleCall
from slimify.analysis.frames import is_library
from slimify.analysis.meta_layers import shape_forward
from slimify.analysis.metarun import FastMeta
from slimify.analysis.plan import Plan
from slimify.check.output_structure import difference, structure
from slimify.errors import SlimifyError
from slimify.rewrite.apply import rewrite  # the pipeline's rewrite, run on the skeleton
from slimify.rewrite.batchnorm import BN_TENSORS
from slimify.rules.caches import empty_caches
from slimify.state import SlimState

__all__ = ["Failure", "Runner", "skeleton", "source_line", "first_line"]

_INTERNALS = frozenset(vars(nn.Module()))  # the module's own dicts, sets and flags


@dataclass
class Failure:
    """One switch that did not run like the original: where, and what happened."""

    width: float
    module: str  # innermost module whose forward raised ("" for the model itself / its output)
    line: str  # "file, line N: code" of the model's source, or "" when not known
    message: str

    @property
    def key(self) -> tuple[str, str]:
        """The place, for telling one failure from another while fixing groups."""
        return self.module, self.line

    def describe(self) -> str:
        where = f" in {self.module}" if self.module else ""
        at = f" at {self.line}" if self.line else ""
        return f"width {self.width:g} failed{where}{at}: {self.message}"


# -- skeleton -------------------------------------------------------------------------------
def _meta(t: torch.Tensor) -> torch.Tensor:
    empty = torch.empty(t.shape, dtype=t.dtype, device="meta")  # empty_like runs a Python ref on meta
    return nn.Parameter(empty, t.requires_grad) if issubclass(type(t), nn.Parameter) else empty


_HOOKS = tuple(k for k, v in vars(nn.Module()).items()  # hook dicts and sets (``_parameters``… are built below)
               if isinstance(v, (dict, list, set)) and k not in ("_parameters", "_buffers", "_modules"))
_KINDS: dict[type, int] = {}  # type of an attribute → what the copy does with it (``_kind``)
_CONTAINER, _TENSOR, _METHOD = 1, 2, 3


def _kind(cls: type) -> int:
    """By type, once per type (``isinstance`` of a Parameter runs Python code)."""
    kind = _KINDS.get(cls)
    if kind is None:
        kind = (_CONTAINER if issubclass(cls, (dict, list, set)) else _TENSOR if issubclass(cls, torch.Tensor)
                else _METHOD if issubclass(cls, types.MethodType) else 0)
        _KINDS[cls] = kind
    return kind


def skeleton(model: nn.Module, meta: bool, tensors: dict[int, torch.Tensor] | None = None) -> nn.Module:
    """A copy of ``model``'s module tree, in eval mode, that the rewrite and forward code may change freely: every
    module a new object with its own parameter, buffer, submodule and hook dicts (and its own copy
    of each dict, list or set attribute, which forward code may fill); its tensors empty on the
    meta device (``meta``; ``tensors`` keeps them from one copy to the next) or the user's own
    (shared, never written: eval mode, no grad)."""
    memo: dict[int, Any] = {}
    tensors = {} if tensors is None else tensors

    def tensor(t: torch.Tensor | None) -> torch.Tensor | None:
        if not meta or t is None:
            return t
        found = tensors.get(id(t))
        if found is None:
            found = tensors[id(t)] = _meta(t)
        return found

    def module(m: nn.Module) -> nn.Module:
        found = memo.get(id(m))
        if found is not None:
            return found
        new = type(m).__new__(type(m))
        memo[id(m)] = new
        own = m.__dict__
        state = own.copy()
        state["training"] = False  # eval mode, without a second walk of the tree
        for k in _HOOKS:  # the module's own hook dicts: the rewrite may register hooks on the copy
            hooks = own.get(k)
            if hooks is not None:
                state[k] = hooks.copy()
        for k in own.keys() - _INTERNALS:  # the class's own attributes
            v = own[k]
            kind = _KINDS.get(type(v), -1)
            if kind < 0:
                kind = _kind(type(v))
            if kind == _CONTAINER:  # what forward code may fill in place: one copy per container
                copied = memo.get(id(v))
                state[k] = copied if copied is not None else memo.setdefault(id(v), copy_container(v))
            elif kind == _TENSOR:  # on meta too, or the meta run would mix devices
                state[k] = tensor(v)
            elif kind == _METHOD and v.__self__ is m:  # `self.forward = self.forward_x`: else the copy
                state[k] = types.MethodType(v.__func__, new)  # would run the original's
        state["_parameters"] = {k: tensor(p) for k, p in m._parameters.items()}
        state["_buffers"] = {k: tensor(b) for k, b in m._buffers.items()}
        state["_modules"] = {k: None if c is None else module(c) for k, c in m._modules.items()}
        new.__dict__.update(state)
        return new

    return module(model)


class _MetaSizes:
    """On the meta device a switch's tensors are only sizes. So the skeleton is rewritten without
    the plan's parameter cuts and private BatchNorms, and before each switch runs, every cut
    parameter or buffer (``plan.params``: its index per dim) and every BatchNorm tensor
    (``plan.batchnorms``: the channels its private copy holds) is set to an empty meta tensor of the
    size the rewrite would serve, shared between tensors of one shape. Serving them through the
    rewrite's properties (a cut and a contiguous copy per read) and building a private
    ``SwitchBatchNorm`` per BatchNorm and switch cost a third of a check on ResNet-50. Tensors the
    rewrite serves in other ways (a parametrized module's) stay with the rewrite."""

    def __init__(self, net: nn.Module, plan: Plan) -> None:
        modules = dict(net.named_modules(remove_duplicate=False))
        # (store, name, original, (dtype, is a Parameter), per switch its shape or None where the original's)
        self.entries: list[tuple[dict[str, Any], str, torch.Tensor, tuple[torch.dtype, bool],
                                 list[tuple[int, ...] | None]]] = []
        self.taken: set[tuple[str, str]] = set()
        self.empty: dict[tuple[tuple[int, ...], tuple[torch.dtype, bool]], torch.Tensor] = {}
        for (path, name), per_switch in plan.params.items():
            store = _store(modules[path], name)
            if store is not None:
                full = store[name].shape
                self._add(store, name, [tuple(_length(dims.get(d), n) for d, n in enumerate(full))
                                        for dims in per_switch])
                self.taken.add((path, name))
        for path, per_switch in plan.batchnorms.items():
            for name in BN_TENSORS[:4]:  # weight, bias, running_mean, running_var: the count has no channels
                store = _store(modules[path], name)
                if store is not None:
                    self._add(store, name, [None if w >= 1.0 else (len(index),)
                                            for w, index in zip(plan.switches, per_switch)])

    def _add(self, store: dict[str, Any], name: str, shapes: list[tuple[int, ...] | None]) -> None:
        """One tensor; what ``select`` needs per switch is worked out here once, not per switch."""
        original = store[name]
        full = tuple(original.shape)
        self.entries.append((store, name, original, (original.dtype, isinstance(original, nn.Parameter)),
                             [None if shape == full else shape for shape in shapes]))

    def plan_without(self, plan: Plan) -> Plan:
        """``plan`` less what these sizes serve: the rewrite serves the rest (attributes, caches)."""
        return dataclasses.replace(plan, params={k: v for k, v in plan.params.items() if k not in self.taken},
                                   batchnorms={})

    def select(self, switch: int) -> None:
        empty = self.empty
        for store, name, original, kind, shapes in self.entries:
            shape = shapes[switch]
            if shape is None:
                store[name] = original
                continue
            t = empty.get((shape, kind))
            if t is None:
                t = torch.empty(shape, dtype=kind[0], device="meta")
                t = empty[(shape, kind)] = nn.Parameter(t, requires_grad=False) if kind[1] else t
            store[name] = t


def _store(module: nn.Module, name: str) -> dict[str, Any] | None:
    """The dict holding ``module``'s plain tensor ``name`` (``None``: none, or served otherwise)."""
    if getattr(type(module), name, None) is not None or "parametrizations" in module._modules:
        return None  # a property of its class (or a base's) or a parametrization: the rewrite serves it
    for store in (module._parameters, module._buffers):
        if store.get(name) is not None:
            return store
    return None


def _length(index: Any, size: int) -> int:
    if index is None:
        return size
    if isinstance(index, slice):
        return len(range(*index.indices(size)))
    return len(index)


def _shape_forwards(net: nn.Module) -> None:
    """Torch's and timm's own layers on the skeleton (by their class before the rewrite) get
    :func:`shape_forward`: the size checks of their forward at a fraction of its cost. A module
    whose forward is its own attribute keeps it."""
    for m in net.modules():
        if "forward" not in m.__dict__:
            cls = type(m).__dict__.get("__slimify_base__", type(m))
            forward = shape_forward(m, cls)
            if forward is not None:
                m.__dict__["forward"] = forward


# -- running ----------------------------------------------------------------------------------
def source_line(tb: Any) -> tuple[str, str]:
    """The innermost module (its path via ``paths``) and model source line in a traceback."""
    frames = traceback.extract_tb(tb)
    for f in reversed(frames):
        if not is_library(f.filename):
            code = (f.line or linecache.getline(f.filename, f.lineno)).strip()
            return f.filename, f"{f.filename}, line {f.lineno}, in {f.name}: {code}"
    return "", ""


def _innermost_module(tb: Any, paths: dict[int, str]) -> str:
    found = ""
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and id(owner) in paths:
            found = paths[id(owner)]
        tb = tb.tb_next
    return found


class Runner:
    """Runs skeletons of ``model`` on the example inputs (``model(*inputs.args, **inputs.kwargs)``,
    the call the trace recorded): each plan's switches narrower than 1.0, compared
    with the reference output structure (the one the trace recorded, else the original's, run
    here). On the meta device where the model runs there; when a meta run fails, the original's
    full width (the rewritten skeleton at 1.0 serves the original tensors and attributes) tells a
    model meta cannot run (then everything runs for real) from a failing switch. Models with
    recurrent layers run for real: their meta kernels are slower than real ones."""

    def __init__(self, model: nn.Module, inputs: ExampleCall, plan: Plan, recorded: Any = None,
                 output_line: str = "") -> None:
        self.model, self.inputs, self.reference, self.output_line = model, inputs, recorded, output_line
        self.tensors: dict[int, torch.Tensor] = {}  # the model's tensors → their meta copies
        self.meta = not any(isinstance(m, nn.RNNBase) for m in model.modules())
        self.settled = False  # meta or real decided by a run of the original
        if recorded is None:
            self._settle(plan)

    def _settle(self, plan: Plan) -> None:
        """Run the original once (meta first where allowed): the device, and a reference. With a
        reference recorded by the trace (which ran the original), a failing meta run is answer
        enough: the switches run for real, and the original need not run for real again."""
        self.settled = True
        error: Exception | None = None
        for meta in ([True, False] if self.meta else [False]):
            self.meta = meta
            if not meta and self.reference is not None:
                return
            try:
                reference = self._full_width(plan)
                self.reference = reference if self.reference is None else self.reference
                return
            except Exception as e:  # noqa: BLE001 - on meta: .item(), data-dependent sizes; then for real
                error = e
        try:  # the original itself, for real: does the model run on this input at all?
            self._run(self._skeleton())
        except Exception as e:
            error = e
        else:
            raise SlimifyError(f"{type(self.model).__name__}: the converted model fails at full width where the "
                               f"original runs ({type(error).__name__}: {first_line(error)}): a slimify bug, "
                               "please report it") from error
        _, line = source_line(error.__traceback__)
        raise SlimifyError(f"{type(self.model).__name__} does not run on the example input"
                           f"{f' ({line})' if line else ''}: {type(error).__name__}: {first_line(error)}; give "
                           "example_input= a batch the model accepts (input size, channels)") from error

    def _skeleton(self) -> nn.Module:
        net = skeleton(self.model, self.meta, self.tensors)
        empty_caches(net)  # the copy's own empty caches: the model's stay as they are
        return net

    def _rewritten(self, plan: Plan) -> tuple[nn.Module, SlimState, _MetaSizes | None]:
        """The skeleton rewritten with ``plan``; on meta its cut tensors get their switch's sizes
        from a :class:`_MetaSizes` instead (``None`` for real runs)."""
        net, state = self._skeleton(), SlimState(plan.switches)
        served = {path for path, name in plan.params if name in BN_TENSORS}  # BatchNorm tensors cut by the plan
        sizes = _MetaSizes(net, plan) if self.meta and not served & plan.batchnorms.keys() else None
        rewrite(net, plan if sizes is None else sizes.plan_without(plan), state)
        if self.meta:
            _shape_forwards(net)
        return net, state, sizes

    def _full_width(self, plan: Plan) -> Any:
        if plan.switches[-1] < 1.0:
            return self._run(self._skeleton())
        net, _, _ = self._rewritten(plan)  # every switch's BatchNorm sizes start as the original's
        return self._run(net)

    def _run(self, net: nn.Module) -> Any:
        args, kwargs = self.inputs.args, self.inputs.kwargs
        if self.meta:
            args, kwargs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, (args, kwargs))
        with torch.no_grad(), warnings.catch_warnings(), FastMeta() if self.meta else contextlib.nullcontext():
            warnings.simplefilter("ignore")
            return structure(net(*args, **kwargs))

    def switches(self, plan: Plan, first: int | None = None) -> Failure | None:
        """Run every switch of ``plan`` narrower than 1.0 on a rewritten skeleton; the first
        failure, trying switch ``first`` first."""
        net, state, sizes = self._rewritten(plan)
        order = [i for i, w in enumerate(plan.switches) if w < 1.0]
        if first in order:
            order.remove(first)
            order.insert(0, first)
        for i in order:
            state.select(plan.switches[i])
            if sizes is not None:
                sizes.select(i)
            try:
                got = self._run(net)
            except Exception as e:  # noqa: BLE001 - any failure is what the check looks for
                if not self.settled:  # a model meta cannot run, or a failing switch? Ask the original
                    meta = self.meta
                    self._settle(plan)
                    if self.meta != meta:
                        return self.switches(plan, first)
                paths = {id(m): p for p, m in net.named_modules()}
                return Failure(plan.switches[i], _innermost_module(e.__traceback__, paths),
                               source_line(e.__traceback__)[1], f"{type(e).__name__}: {first_line(e)}")
            diff = difference(self.reference, got, "", loose_first=not self.meta)
            if diff:
                return Failure(plan.switches[i], "", self.output_line, f"the {diff}")
        return None


def first_line(error: Exception) -> str:
    return (str(error).splitlines() or [""])[0][:300]
