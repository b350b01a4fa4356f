"""Run a traced graph once to note every node's shape (and small python values, for reshape
rules). Analysis needs shapes, not numbers: the run happens on the meta device where that is
cheaper, and ops that keep their input's shape skip even their meta kernel.

Forward code may store what it computes on the model (a cache dict, ``self.last = x``): every
attribute a tracer proxy or meta tensor entered is put back afterwards (``state_kept``).
"""
from __future__ import annotations

import contextlib
import linecache
import operator
import re
import warnings
from collections.abc import Callable, Iterator
from operator import is_
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_map

from slimify.analysis.containers import contents, refill, same_contents
from slimify.analysis.meta_layers import shape_call
from slimify.analysis.metarun import FastMeta
from slimify.analysis.own_layers import layers_kept
from slimify.analysis.own_names import attr_of
from slimify.errors import SlimifyError

__all__ = ["SHAPE_KEY", "WHERE_KEY", "VALUE_KEY",
           "record_shapes", "record_on_meta", "note_value", "holds_tensor", "state_kept", "holds_proxy", "SAME_SHAPE_MODULES"]

SHAPE_KEY = "slimify.shape"  # node.meta key: torch.Size (or a pytree of them) of the node's value
WHERE_KEY = "slimify.where"  # node.meta key: (file, line, function) of the model code that made the node (trace.py)
VALUE_KEY = "slimify.value"  # node.meta key: small non-tensor values (ints, tuples) seen while running


def _timm_same_shape() -> tuple[type, ...]:
    try:
        import timm.layers as layers
    except ImportError:
        return ()
    names = ("BatchNormAct2d", "FrozenBatchNormAct2d", "GroupNorm", "GroupNorm1", "GroupNormAct", "GroupNorm1Act",
             "LayerNorm", "LayerNorm2d", "LayerNormAct", "LayerNormAct2d", "RmsNorm", "RmsNorm2d", "RmsNormAct",
             "RmsNormAct2d", "SimpleNorm", "SimpleNorm2d", "DropPath", "GELU", "GELUTanh", "QuickGELU", "Swish",
             "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Mish", "PReLU", "HardMish")
    found = [getattr(layers, n, None) for n in names]
    from timm.layers import activations
    found += [getattr(activations, n, None) for n in names]
    return tuple(c for c in found if isinstance(c, type))


# Exact classes (a subclass may change the shape) whose output has their input's shape and dtype.
SAME_SHAPE_MODULES: frozenset[type] = frozenset((
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LocalResponseNorm,
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.Softplus, nn.Hardtanh, nn.PReLU, nn.Softmax,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
) + _timm_same_shape())
_SAME_SHAPE_FUNCTIONS = frozenset((
    F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.hardsigmoid, F.mish, F.leaky_relu, F.elu, F.softplus,
    F.dropout, F.layer_norm, F.group_norm, F.batch_norm, F.rms_norm, F.softmax, torch.sigmoid, torch.tanh,
    torch.relu, torch.softmax, torch.nn.functional.hardtanh,
))
_SAME_SHAPE_METHODS = frozenset(("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "softmax", "neg", "exp",
                                 "sqrt", "rsqrt", "abs"))
_BINARY_FUNCTIONS = frozenset((operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd,
                               operator.imul, torch.add, torch.sub, torch.mul, torch.div))
_BINARY_METHODS = frozenset(("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"))


def _float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _like(x: torch.Tensor) -> torch.Tensor:
    """The result of a same-shape op on ``x``: ``x`` itself, or a contiguous one of its shape
    (norms return contiguous tensors; ``view`` after them must work as it does for real)."""
    return x if x.is_contiguous() else x.new_empty(x.shape)


def _same_shape_binary(args: tuple[Any, ...]) -> torch.Tensor | None:
    """``a + b`` whose result has ``a``'s shape and dtype: equal shapes and dtypes, or a float
    tensor with a python number."""
    if len(args) != 2:
        return None
    a, b = args
    if _float(a) and _float(b):
        return _like(a) if a.shape == b.shape and a.dtype == b.dtype else None
    tensor, number = (a, b) if isinstance(a, torch.Tensor) else (b, a)
    return _like(tensor) if _float(tensor) and type(number) in (int, float) else None


def _linear(x: Any, weight: Any) -> torch.Tensor | None:
    if _float(x) and isinstance(weight, torch.Tensor) and weight.ndim == 2 and x.ndim >= 1 \
            and x.shape[-1] == weight.shape[1]:
        return x.new_empty((*x.shape[:-1], weight.shape[0]))
    return None


def _attention(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``scaled_dot_product_attention(q, k, v, …)``: (batch…, N, d_v), batch dims broadcast."""
    if len(args) < 3 or not all(_float(t) and t.ndim >= 2 for t in args[:3]) or kwargs.get("enable_gqa"):
        return None
    q, _, v = args[:3]
    try:
        batch = torch.broadcast_shapes(q.shape[:-2], v.shape[:-2])
    except RuntimeError:
        return None
    return q.new_empty((*batch, q.shape[-2], v.shape[-1]))


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and writes each node's output shape into ``node.meta`` (like
    torch.fx.passes.shape_prop, but keeping small python values too, for reshape rules)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.extra_traceback = False  # the error names the model's line (``_cannot_run``), not fx's node dump

    def fetch_attr(self, target: str) -> Any:
        return attr_of(self.module, target)  # the model's path, also where it clashes with the GraphModule's names

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as e:  # name the model's line, as torch.fx's own passes name the node
            raise SlimifyError(_cannot_run(self.module, n, e)) from e
        note_value(n, result)
        return result


def _cannot_run(gm: fx.GraphModule, node: fx.Node, error: Exception) -> str:
    """One line: the model does not run on the example input, where, and what to try."""
    where = node.meta.get(WHERE_KEY)
    code = f"{where[0]}, line {where[1]}, in {where[2]}: {linecache.getline(where[0], where[1]).strip()}" \
        if where else node.format_node()
    module = f" ({node.target})" if node.op == "call_module" else ""
    first = _proxies_as_values(gm, (str(error).splitlines() or [""])[0][:300])
    return (f"{type(gm).__name__} does not run on the example input: {code}{module}: {type(error).__name__}: {first}; "
            "give example_input= a batch the model accepts (its input size and channels)")


def _proxies_as_values(gm: fx.GraphModule, message: str) -> str:
    """A message forward code formatted while it was traced names a value as ``Proxy(getitem_2)``:
    put the value the run computed there (``Input height (100) doesn't match model (224)``)."""
    if "Proxy(" not in message:
        return message
    nodes = {n.name: n for n in gm.graph.nodes}

    def value(match: re.Match[str]) -> str:
        node = nodes.get(match.group(1))
        return str(node.meta[VALUE_KEY]) if node is not None and VALUE_KEY in node.meta else "?"
    return re.sub(r"Proxy\((\w+)\)", value, message)


class _MetaShapeRecorder(_ShapeRecorder):
    """On the meta device, ops whose result shape is plain (same-shape ops, linear layers,
    attention) make an empty tensor of that shape: their meta kernels cost 0.1-0.8 ms each
    (they run torch's Python decompositions), and only the shape is wanted."""

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        module = self.fetch_attr(target)
        if len(args) == 1 and not kwargs and _float(args[0]):
            if (out := shape_call(module, type(module), args[0])) is not None:  # torch's layers, laid out as for real
                return out
            if type(module) in SAME_SHAPE_MODULES:
                return _like(args[0])
        return super().call_module(target, args, kwargs)

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        out = None
        if target in _SAME_SHAPE_FUNCTIONS and args and _float(args[0]) and kwargs.get("dtype") is None:
            out = _like(args[0])
        elif target in _BINARY_FUNCTIONS and not kwargs:
            out = _same_shape_binary(args)
        elif target is F.linear and len(args) >= 2 and not kwargs:
            out = _linear(args[0], args[1])
        elif target is F.scaled_dot_product_attention:
            out = _attention(args, kwargs)
        return out if out is not None else super().call_function(target, args, kwargs)

    def call_method(self, target: Any, args: Any, kwargs: Any) -> Any:
        out = None
        if target in _SAME_SHAPE_METHODS and args and _float(args[0]) and not kwargs \
                and len(args) == (2 if target == "softmax" else 1):
            out = _like(args[0])
        elif target in _BINARY_METHODS and not kwargs and isinstance(args[0], torch.Tensor):
            out = _same_shape_binary(args)
        return out if out is not None else super().call_method(target, args, kwargs)


def holds_tensor(value: Any) -> bool:
    found = []
    tree_map(lambda v: found.append(v) if isinstance(v, torch.Tensor) else None, value)
    return bool(found)


_NUMBERS = frozenset((int, float, bool))  # exact types: leaves of a pytree, kept as values
_SEQUENCES = frozenset((tuple, list, torch.Size))  # pytree nodes: tree_map gives a tuple (a list for a list)


def note_value(node: fx.Node, value: Any) -> None:
    """Write ``value``'s shape (a pytree of them) and, for small python values, the value itself
    into ``node.meta``: what every recorder leaves for the rules. A tensor or a number (nearly every
    node) is a pytree leaf: answered without ``tree_map`` (~15 µs a call, on every node)."""
    if isinstance(value, torch.Tensor):
        node.meta[SHAPE_KEY] = value.shape
        return
    if type(value) in _NUMBERS:
        node.meta[SHAPE_KEY] = None
        node.meta[VALUE_KEY] = value
        return
    if type(value) in _SEQUENCES and all(type(v) in _NUMBERS for v in value):  # a size, a list of ints
        node.meta[SHAPE_KEY] = [None] * len(value) if type(value) is list else (None,) * len(value)
        node.meta[VALUE_KEY] = value
        return
    node.meta[SHAPE_KEY] = tree_map(lambda v: v.shape if isinstance(v, torch.Tensor) else None, value)
    if isinstance(value, (int, float, bool, tuple, list, torch.Size)) and not holds_tensor(value):
        node.meta[VALUE_KEY] = value


def _holds(value: Any, kind: Callable[[Any], bool]) -> bool:
    if kind(value):
        return True
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, (list, tuple)) and any(kind(v) for v in value)


def holds_proxy(value: Any) -> bool:
    return _holds(value, lambda v: isinstance(v, fx.Proxy))


def _holds_meta(value: Any) -> bool:
    return _holds(value, lambda v: isinstance(v, torch.Tensor) and v.is_meta)


# nn.Module's own bookkeeping (parameter, buffer, submodule and hook dicts): forward code stores
# no values there, and scanning them on every module was most of the cost
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_PLAIN = frozenset((int, float, bool, str, type(None), tuple))  # attribute types that hold no container


@contextlib.contextmanager
def state_kept(model: nn.Module, leftover: Callable[[Any], bool] = holds_proxy) -> Iterator[None]:
    """Forward code that stores state (a cache dict, ``self.last = x``) would keep fx proxies (or
    meta tensors) in the user's model after tracing: put back every attribute, or dict's or
    list's contents, such a value entered. Only what changed is written, straight into the
    module's ``__dict__`` and through the built-in container methods, so an object the model owns
    is never asked to change (a frozen config stays as it was, ``containers.refill``)."""
    before: list[tuple[dict[str, Any], dict[str, Any], dict[str, list[Any]]]] = []
    for m in model.modules():  # per module: its dict, a copy of it, what its dicts and lists held
        own = vars(m)
        held = {}
        for k in own.keys() - _MODULE_INTERNALS:
            v = own[k]
            if type(v) not in _PLAIN:  # ints, strings, tuples hold nothing to put back
                items = contents(v)
                if items is not None:
                    held[k] = items
        before.append((own, own.copy(), held))
    try:
        with layers_kept(model):  # its layers, weights and buffers too
            yield
    finally:
        for own, copied, held in before:
            if len(own) == len(copied) and all(map(is_, own, copied)) and all(map(is_, own.values(), copied.values())):
                for name, items in held.items():  # no attribute set or deleted (nearly every module)
                    value = own[name]
                    if not same_contents(value, items) and leftover(value):
                        refill(value, items)
                continue
            for name in own.keys() - _MODULE_INTERNALS:  # a set: deleting below cannot upset it
                value = own[name]
                if name not in copied:
                    if leftover(value):
                        del own[name]
                elif value is not copied[name]:
                    if leftover(value):
                        own[name] = copied[name]
                elif name in held and not same_contents(value, held[name]) and leftover(value):
                    refill(value, held[name])
            for name in copied.keys() - _MODULE_INTERNALS - own.keys():  # deleted by forward code
                own[name] = copied[name]


@contextlib.contextmanager
def _tensors_on_meta(gm: fx.GraphModule) -> Iterator[None]:
    """Every tensor the graph reads (parameters, buffers, fx's ``_tensor_constant`` attributes)
    swapped for an empty meta tensor of its shape (one per tensor, so tied weights stay tied), and
    put back afterwards. Written straight into the modules' dicts: ``torch.func.functional_call``
    does the same through named-member lookups at ~5x the cost."""
    metas: dict[int, torch.Tensor] = {}
    swapped: list[tuple[dict[str, Any], str, torch.Tensor]] = []

    def swap(store: dict[str, Any], name: str) -> None:
        t = store[name]
        meta = metas.get(id(t))
        if meta is None:  # empty_like would run a Python reference on meta
            meta = metas[id(t)] = torch.empty(t.shape, dtype=t.dtype, device="meta")
        swapped.append((store, name, t))
        store[name] = meta

    try:
        for m in gm.modules():
            for store in (m._parameters, m._buffers):
                for name in [k for k, t in store.items() if t is not None]:
                    swap(store, name)
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                owner, _, name = node.target.rpartition(".")
                attrs = vars(attr_of(gm, owner) if owner else gm)
                if isinstance(attrs.get(name), torch.Tensor):
                    swap(attrs, name)
        yield
    finally:
        for store, name, t in reversed(swapped):
            store[name] = t


def record_on_meta(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """Note every node's shape from a run on the meta device (common ops answered from their
    shapes by :class:`FastMeta`); raises where that cannot work."""
    with torch.no_grad(), _tensors_on_meta(gm), state_kept(gm, _holds_meta), warnings.catch_warnings(), FastMeta():
        warnings.simplefilter("ignore")
        # meta values take no memory: no last-use table to free them early (a pass over the graph)
        _MetaShapeRecorder(gm, garbage_collect_values=False).run(*(x.to("meta") for x in inputs))


def record_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """Note every node's shape: on the meta device (no arithmetic) unless the model has
    recurrent layers (their meta kernels are far slower than real ones). Ops that need values
    (``.item()``, data-dependent sizes) or mix devices fail on meta: then one real run records
    everything. Over the 166 timm models of the coverage list the median recording takes 0.024 s
    on meta against 0.070 s for real, with identical shapes (``docs/design.md``)."""
    if not any(isinstance(m, nn.RNNBase) for m in gm.modules()):
        try:
            record_on_meta(gm, inputs)
            return
        except Exception:  # noqa: BLE001 - any failure means: measure for real
            for node in gm.graph.nodes:
                node.meta.pop(SHAPE_KEY, None)
                node.meta.pop(VALUE_KEY, None)
    with torch.no_grad():
        _ShapeRecorder(gm).run(*inputs)
