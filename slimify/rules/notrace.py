"""timm's no-trace modules (``MobileVitBlock``, ``GPSA``, ``LocalWindowAttention``…) branch on
tensor shapes, which torch.fx cannot follow, so the model's tracer keeps them as leaves. Their
rule traces each one on its own with *concrete* values — every proxy also carries the value
the example input gives it, so ``if H % window:`` takes the branch the example takes — and
runs the ordinary rule table over that graph, as if the module had been traced in place.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import operator
from collections import OrderedDict
from collections.abc import Callable, Iterator
from copy import deepcopy
from typing import Any

import torch
import torch.fx as fx
import torch.fx._symbolic_trace as fx_trace
import torch.nn as nn

from slimify.analysis.shape_pass import VALUE_KEY, holds_tensor, note_value
from slimify.analysis.tracer import SlimifyTracer, attr_of, graph_module
from slimify.rules.base import ParamVal, RuleContext, TensorVal
from slimify.rules.caches import empty_caches
from slimify.rules.detection import postprocessing_functions
from slimify.rules.graph_walk import GraphSteps, attr_value, walk_nodes
from slimify.rules.registry import find_module_rule, rule

__all__ = ["ConcreteTracer", "trace_through", "untraced_rule", "notrace_classes", "assign_items"]


# answered with the value: sizes that never change with the width (einops indexes a dict by ``x.ndim``)
_CONCRETE_ATTRS = frozenset({"device", "dtype", "is_cuda", "layout", "requires_grad", "is_floating_point",
                             "ndim", "dim", "ndimension"})


class _ConcreteProxy(fx.Proxy):
    """A proxy that answers ``len``, ``int``, ``float``, ``math.ceil`` and ``__index__`` with its value."""

    def _value(self) -> Any:
        return self.tracer.values[self.node]

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        """``isinstance(x, torch.Tensor)`` holds for a proxy of a tensor (``torch._assert(isinstance(
        rel_codes, torch.Tensor))`` in torchvision's box coder); ``type(x)`` stays the proxy's."""
        own = vars(self)
        node = own.get("node", own.get("_node"))  # an attribute proxy's node is made when needed: not here
        value = own["tracer"].values.get(node) if node is not None and "tracer" in own else None
        return type(value) if isinstance(value, torch.Tensor) else type(self)

    def __len__(self) -> int:
        return len(self._value())

    def __getattr__(self, name: str) -> Any:
        if name in _CONCRETE_ATTRS:  # ``torch.autocast(device_type=v.device.type)``
            return getattr(self._value(), name)
        if name.startswith("_"):  # protocols (``__cuda_array_interface__``), ``Parameter``'s ``_is_param`` check
            raise AttributeError(name)
        return _ConcreteAttribute(self, name)  # ``len(x.shape)`` needs the concrete answers too

    def __int__(self) -> int:
        return int(self._value())

    def __float__(self) -> float:
        return float(self._value())

    def __ceil__(self) -> int:
        return math.ceil(self._value())

    def __floor__(self) -> int:
        return math.floor(self._value())

    def __format__(self, spec: str) -> str:
        """f-strings of forward code (error messages) show the value."""
        return format(self._value(), spec)

    def __setitem__(self, key: Any, value: Any) -> None:
        """``keep[idx] = True``: a node that changes the tensor in place (no rule: what it touches is fixed)."""
        self.tracer.create_proxy("call_function", assign_items, (self, key, value), {})

    def __index__(self) -> int:
        """``range(x.shape[0])``, ``lst[:n]``: Python needs the int. Torch's functions still see
        the proxy: a tensor proxy among their arguments dispatches before sizes are parsed, and
        size-only factories are recorded as nodes (``_factories_recorded``)."""
        return operator.index(self._value())


# torch factories whose arguments are sizes or data: a proxy there is not dispatched like a tensor
_FACTORIES = ("tensor", "as_tensor", "scalar_tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn",
              "randint", "eye", "linspace")


@contextlib.contextmanager
def _factories_recorded(tracer: fx.Tracer) -> Iterator[None]:
    """``torch.tensor(num_channels)`` with a size read from a tensor: a node of the graph (its
    data is a proxy, which torch's factories cannot read), not an error."""
    originals = {name: getattr(torch, name) for name in _FACTORIES}

    def recorded(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def factory(*args: Any, **kwargs: Any) -> Any:
            found: list[Any] = []
            fx.node.map_aggregate((args, kwargs), lambda v: found.append(v) if isinstance(v, fx.Proxy) else v)
            if found:
                return tracer.create_proxy("call_function", original, args, kwargs)
            return original(*args, **kwargs)
        return factory

    for name, original in originals.items():
        setattr(torch, name, recorded(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch, name, original)


def assign_items(x: torch.Tensor, key: Any, value: Any) -> torch.Tensor:
    """``x[key] = value`` as a function: the graph node of an item assignment."""
    x[key] = value
    return x


class _ConcreteAttribute(fx.proxy.Attribute, _ConcreteProxy):
    """``x.shape`` before it is used: fx's lazy attribute proxy, answering like a concrete one."""


class ConcreteTracer(SlimifyTracer):
    """fx tracer that also runs every op on concrete inputs: control flow on shapes and
    values resolves the way the example input resolves it."""

    def __init__(self, has_rule: Any, inputs: list[Any]) -> None:
        super().__init__(has_rule)
        self.proxy_buffer_attributes = True  # ``self.rel_indices.expand(B, …)`` needs a proxy to dispatch
        self._autowrap_function_ids.update(id(f) for f in postprocessing_functions())  # leaves, run for value
        self.values: dict[fx.Node, Any] = {}
        self._inputs = list(inputs)
        self.evaluating = False  # inside ``_evaluate``: module calls and attributes run as they are

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def create_arg(self, a: Any) -> Any:
        if issubclass(type(a), fx.Proxy):  # before fx's ``isinstance(a, torch.Tensor)``, which a proxy passes
            return a.node
        return super().create_arg(a)

    def create_proxy(self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None,
                     type_expr: Any = None, proxy_factory_fn: Any = None) -> fx.Proxy:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        value = self._evaluate(kind, target, self._concrete(args), self._concrete(kwargs))
        self.values[proxy.node] = value
        note_value(proxy.node, value)
        return proxy

    def _concrete(self, value: Any) -> Any:
        """``value`` with every proxy replaced by its value, in plain lists and dicts: forward code
        may change a list it gets (torchvision's ``_get_window_and_shift_size``)."""
        if isinstance(value, fx.Proxy):
            return self.values[value.node]
        if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
            return (list if isinstance(value, list) else tuple)(self._concrete(v) for v in value)
        if isinstance(value, dict):
            return {k: self._concrete(v) for k, v in value.items()}
        return fx.node.map_aggregate(value, lambda v: self.values[v.node] if isinstance(v, fx.Proxy) else v)

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:
        with _factories_recorded(self):
            return super().trace(root, concrete_args)

    def _evaluate(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        """Run one op for real. fx's patches stay in place: while ``evaluating``, the patched
        module call runs the module as it is and the patched attribute lookup returns the value
        (``call_module``, ``getattr``), and wrapped functions given no proxy call the original.
        Lifting the patches instead sets attributes on ``nn.Module``, which with timm's ~1300
        subclasses cost ~0.6 ms a lift (60 ms of an EfficientViT-B0 conversion)."""
        outer, self.evaluating = self.evaluating, True
        try:
            with fx_trace._is_fx_tracing_context(False), torch.no_grad():
                return self._run(kind, target, args, kwargs)
        finally:
            self.evaluating = outer

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        if self.evaluating:  # a module run for its value inside ``_evaluate``: nothing to record
            return forward(*args, **kwargs)
        if not self._installed(m):  # made inside forward code (``nn.ZeroPad2d((1, 0, 1, 0))(x)``): its code is
            return forward(*args, **kwargs)  # the model's, traced through (no path to name it by)
        return super().call_module(m, forward, args, kwargs)

    def _installed(self, m: nn.Module) -> bool:
        try:
            self.path_of_module(m)
        except NameError:
            return False
        return True

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        return attr_val if self.evaluating else super().getattr(attr, attr_val, parameter_proxy_cache)

    def _run(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        if kind == "placeholder":
            return self._inputs.pop(0) if self._inputs else (args[0] if args else None)
        if kind == "get_attr":
            owner, _, name = target.rpartition(".")
            return getattr(self.root.get_submodule(owner) if owner else self.root, name)
        if kind == "call_module":
            return self.root.get_submodule(target)(*args, **kwargs)
        if kind == "call_method":
            return getattr(args[0], target)(*args[1:], **kwargs)
        if kind == "call_function":
            return target(*args, **kwargs)
        return None

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self.values[obj.node])

    def iter(self, obj: fx.Proxy) -> Any:
        return iter([obj[i] for i in range(len(self.values[obj.node]))])

    def keys(self, obj: fx.Proxy) -> Any:
        return self.values[obj.node].keys()


def _example(value: Any) -> Any:
    """A concrete stand-in for an analysed argument (random values of its shape)."""
    if isinstance(value, TensorVal):
        return torch.randn(value.shape)
    if isinstance(value, ParamVal):
        return value.tensor
    if isinstance(value, (list, tuple)):
        return type(value)(_example(v) for v in value)
    if isinstance(value, dict):  # torchvision's MultiScaleRoIAlign takes a dict of feature maps
        return type(value)((k, _example(v)) for k, v in value.items())
    return value


def _absolute(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    """Rename call_module/get_attr targets and module stacks from the module's own namespace
    to the model's."""
    join = (lambda p: f"{path}.{p}" if p else path) if path else (lambda p: p)
    for node in gm.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            node.target = join(node.target)
        stack = node.meta.get("nn_module_stack") or {}
        inner = [(join(v[0] if isinstance(v, tuple) else v), v[1] if isinstance(v, tuple) else None)
                 for v in stack.values()]
        node.meta["nn_module_stack"] = OrderedDict([(path, (path, type(module)))] + [(p, (p, t)) for p, t in inner])


def trace_through(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    """Rule for a module fx cannot trace symbolically: trace it concretely, analyse its ops."""
    m: nn.Module = ctx.module
    path = ctx.path
    try:
        bound = inspect.signature(m.forward).bind(*args, **kwargs)
    except TypeError as e:
        ctx.fix_all([args, kwargs], f"{path}: unexpected call of {type(m).__name__} ({e})")
        return ctx.fixed(tuple(ctx.out_shape)) if isinstance(ctx.out_shape, torch.Size) else None
    bound.apply_defaults()
    try:
        gm, tracer, constants = _concrete_graph(ctx, m, bound)
    except Exception as e:  # noqa: BLE001 - a module we cannot follow stays a boundary
        ctx.fix_all([args, kwargs], f"{path}: cannot trace {type(m).__name__} ({type(e).__name__}: {e})"[:300])
        return ctx.fixed(tuple(ctx.out_shape)) if isinstance(ctx.out_shape, torch.Size) else None
    _absolute(gm, path, m)
    outer = ctx.node
    try:
        steps = ModuleSteps(tracer, constants, list(bound.arguments.values()))
        return walk_nodes(ctx, gm.graph, dict(ctx.root.named_modules()), steps, untraced_rule)
    finally:
        ctx.begin(outer)


def _concrete_graph(ctx: RuleContext, m: nn.Module, bound: inspect.BoundArguments
                    ) -> tuple[fx.GraphModule, ConcreteTracer, set[fx.Node]]:
    """The module's graph, traced on a copy with random stand-ins of its analysed inputs."""
    examples = [_example(a) for a in bound.arguments.values()]
    # arguments holding no tensor (``patch_coord=None``, flags) are constants: ``is None`` must see them
    constant = {name: value for name, value in bound.arguments.items()  # scalars only: fx splits containers
                if (value is None or isinstance(value, (bool, int, float, str)))
                and bound.signature.parameters[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                              inspect.Parameter.KEYWORD_ONLY)}
    tracer = ConcreteTracer(lambda mm: find_module_rule(mm) is not None, examples)
    copy = deepcopy(m)  # forward code may store state (ConViT's rel_indices): never in the user's model
    with torch.no_grad():
        copy(*deepcopy(examples))  # fill such state first, so the trace takes the steady branch
        empty_caches(copy)  # but a cache fills while tracing: its tensors come from parameters, not constants
        graph = tracer.trace(copy, concrete_args=constant or None)
    gm = graph_module(copy, graph, type(m).__name__)
    state = {n for n, _ in copy.named_parameters()} | {n for n, _ in copy.named_buffers()}
    constants = set()  # tensors fx made attributes (``_tensor_constant0``): computed from constants
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in state:
            constants.add(node)
            owner, _, name = node.target.rpartition(".")
            tracer.values.setdefault(node, attr_of(gm, node.target))
    return gm, tracer, constants


class ModuleSteps(GraphSteps):
    """A no-trace module's own graph (:func:`walk_nodes`' second use), walked inside the model's
    walk as the module's rule: its inputs are the values that walk already analysed (not fixed
    model inputs), its output is handed back as the module's value (not fixed), and values come
    from the concrete tracer's record (``tracer.values``), as this graph had no shape pass of its
    own. Its tensor attributes fx made from constants (``_tensor_constant0``) carry no channels.
    The model's steps (``analysis/walk.py``) also note parameter reads and keep compared sizes;
    these do neither, as the walk of such a module always has."""

    def __init__(self, tracer: ConcreteTracer, constants: set[fx.Node], inputs: list[Any]) -> None:
        self.tracer, self.constants, self.inputs = tracer, constants, iter(inputs)

    def placeholder(self, ctx: RuleContext, node: fx.Node) -> Any:
        return next(self.inputs, None)

    def get_attr(self, ctx: RuleContext, node: fx.Node) -> Any:
        return attr_value(ctx, node.target, self.tracer.values[node], node in self.constants)

    def holds_tensor(self, node: fx.Node) -> bool:
        return holds_tensor(self.tracer.values[node])

    def plain_value(self, ctx: RuleContext, node: fx.Node) -> Any:
        return node.meta.get(VALUE_KEY, self.tracer.values[node])

    def output(self, ctx: RuleContext, outputs: Any) -> Any:
        return outputs


def untraced_rule(ctx: RuleContext) -> Any:
    """The rule of a module without one that fx cannot trace through: a no-trace class (also one
    registered after slimify was imported) or a module whose tracing failed (``ctx.leaves``) is
    traced on its own with concrete values; None for any other."""
    if ctx.path in ctx.leaves or isinstance(ctx.module, notrace_classes()):
        return trace_through
    return None


def notrace_classes() -> tuple[type[nn.Module], ...]:
    """timm's no-trace module classes (none when timm is missing)."""
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:
        return ()
    return tuple(timm_fx.get_notrace_modules())


rule(*notrace_classes(), fallback=True)(trace_through)  # shape-dependent forward code: traced concretely, on its own
