"""Tracing the model code that symbolic tracing cannot follow: Python control flow on shapes,
sizes and dtypes (``if num_channels != self.num_channels: raise``, ``int(x.shape[-2])``,
``math.ceil(h / p)``), loops over lists of images, decorated forwards (``functools.wraps``
wrappers taking ``*args, **kwargs``), ``**kwargs``, keyword-only and optional arguments, and
outputs that are dicts, dataclasses or lists of dicts.

The whole model is traced once more with the concrete tracer of ``rules/notrace.py``: every proxy
also carries the value the example input gives it, so each branch, loop and ``int()`` resolves
the way the example resolves it, and the graph is the example's path through the code. Nothing
becomes an opaque leaf: every op of the failing code is analysed by the rule table. The root's
arguments are the example inputs themselves (positional, then keyword tensors), so the decorated
``forward`` runs as Python, not as a signature fx must understand.

A module whose code even the concrete tracer cannot follow (it raises while tracing) becomes a
leaf on the spot: the nodes its failed attempt made are taken out of the graph and the call is
recorded again as one ``call_module`` node (run for its value), traced on its own later by the
no-trace rule. The trace goes on from there, so any number of such modules costs one trace of the
model plus one run of each, not a trace per module.
"""
from __future__ import annotations

import dataclasses
import logging
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from slimify.analysis.example_inputs import ExampleCall
from slimify.analysis.shape_pass import SHAPE_KEY, holds_tensor, state_kept
from slimify.analysis.tracer import graph_module
from slimify.rules.notrace import ConcreteTracer

__all__ = ["trace_concretely", "plain_output"]

_log = logging.getLogger(__name__)


def plain_output(value: Any) -> Any:
    """A model output as fx can store it: dataclasses (``ModelOutput`` is also a dict) become
    dicts of their fields, containers keep their form."""
    if isinstance(value, dict):
        return {k: plain_output(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain_output(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(plain_output(v) for v in value)
    if isinstance(value, list):
        return [plain_output(v) for v in value]
    return value


class DataDependentBranch(fx.proxy.TraceError):
    """Control flow on a tensor's values: no trace of one example holds for every input."""


class EntryTracer(ConcreteTracer):
    """Concrete tracer whose root arguments are the example inputs: tensors (and containers of
    them) become placeholders, everything else is passed as the constant it is. ``leaves`` are
    module paths kept as leaves because tracing failed inside them."""

    def __init__(self, has_rule: Callable[[nn.Module], bool], inputs: ExampleCall, leaves: set[str]) -> None:
        super().__init__(has_rule, list(inputs.flat))
        self.inputs, self.leaves = inputs, leaves
        self._live: dict[fx.Node, int] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        """A proxy whose tensor value is dropped once no proxy of its node is left: forward code can
        no longer reach it, and the shapes are noted already. The whole model's activations would
        otherwise stay alive at once (a detector at 320 px: gigabytes)."""
        proxy = super().proxy(node)
        self._live[node] = self._live.get(node, 0) + 1
        weakref.finalize(proxy, self._release, node)
        return proxy

    def _release(self, node: fx.Node) -> None:
        self._live[node] -= 1
        if not self._live[node] and isinstance(self.values.get(node), torch.Tensor):
            self.values[node] = None

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> tuple[Any, list[Any]]:
        names = _arg_names(root_fn, self.inputs)
        proxies = iter([self.create_proxy("placeholder", name, (), {}) for name in names])
        args = [next(proxies) if holds_tensor(v) else v for v in self.inputs.args]
        kwargs = {k: next(proxies) if holds_tensor(v) else v for k, v in self.inputs.kwargs.items()}
        root = self.root

        def entry() -> Any:
            return plain_output(root_fn(root, *args, **kwargs))

        return entry, []

    def to_bool(self, obj: fx.Proxy) -> bool:
        """Branches on sizes and dtypes take the example's way; a branch on a tensor's *values*
        (``if y.sum() > 0``) could go the other way on other data: refused, like fx does."""
        if isinstance(self.values[obj.node], torch.Tensor):
            raise DataDependentBranch("forward code branches on a tensor's values (data-dependent control flow), "
                                      "so the path it takes may change with the input")
        return super().to_bool(obj)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Trace through ``m``; where that raises, record it again as a leaf (``_retry_as_leaf``)."""
        if self.evaluating:
            return super().call_module(m, forward, args, kwargs)
        last, depth = next(iter(reversed(self.graph.nodes)), None), len(self.module_stack)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:
            path = self._retry_as_leaf(m, e)
            if path is None:
                raise
            _log.debug("tracing fails inside %s (%s): a leaf now", path, e, exc_info=True)
            self._abandon(last, depth)
            self.leaves.add(path)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:
            e.__slimify_leaf_failed__ = True  # type: ignore[attr-defined]  # the outer modules fail the same way
            raise

    def _retry_as_leaf(self, m: nn.Module, e: Exception) -> str | None:
        """The path of ``m`` if it was traced through and may be tried again as a leaf: not after a
        branch on values (refused), and not where a leaf inside it failed for real (so would it)."""
        if isinstance(e, DataDependentBranch) or getattr(e, "__slimify_leaf_failed__", False):
            return None
        try:
            path = self.path_of_module(m)
        except NameError:  # a module made inside forward code
            return None
        return None if self.is_leaf_module(m, path) else path

    def _abandon(self, last: fx.Node | None, depth: int) -> None:
        """Take the nodes a failed attempt made out of the graph (newest first, so each has no users
        left), except parameter reads, which fx caches for later reads of the same tensor; and the
        module-stack entries fx did not pop."""
        made = []
        for node in reversed(self.graph.nodes):
            if node is last:
                break
            made.append(node)
        for node in made:
            if node.op != "get_attr" and not node.users:
                self.graph.erase_node(node)
                self.values.pop(node, None)
        while len(self.module_stack) > depth:
            self.module_stack.popitem()


def _arg_names(root_fn: Any, inputs: ExampleCall) -> list[str]:
    """Placeholder names: forward's own parameter names where they can be told, else ``input_i``."""
    import inspect
    try:
        params = [p.name for p in inspect.signature(root_fn).parameters.values()][1:]  # follows __wrapped__
    except (TypeError, ValueError):
        params = []
    names = [params[i] if i < len(params) else f"input_{i}" for i, v in enumerate(inputs.args) if holds_tensor(v)]
    return names + [k for k, v in inputs.kwargs.items() if holds_tensor(v)]


def trace_concretely(model: nn.Module, inputs: ExampleCall, has_rule: Callable[[nn.Module], bool]
                     ) -> tuple[fx.GraphModule, EntryTracer]:
    """The example's path through ``model`` as a graph module whose nodes already hold their
    shapes (``shapes.note_value``). The model's state is put back, forward code may store what it
    computes (the constants fx keeps on the model are the caller's to drop, ``trace._drop_constants``)."""
    tracer = EntryTracer(has_rule, inputs, set())
    with state_kept(model, lambda value: True), torch.no_grad():  # real tensors too, not only proxies
        graph = tracer.trace(model)
        _note_output(graph)
        return graph_module(model, graph, type(model).__name__), tracer


def _note_output(graph: fx.Graph) -> None:
    """The output node's shapes, from the nodes it returns (fx makes it without a proxy, so nothing
    noted it): the self-check's reference, which spares it a run of the original at full width —
    for real, on the models traced here, where meta kernels often cannot run. Left unnoted where a
    returned node has no shapes of its own."""
    output = next((n for n in reversed(graph.nodes) if n.op == "output"), None)
    if output is None or not all(SHAPE_KEY in n.meta for n in output.all_input_nodes):
        return
    output.meta[SHAPE_KEY] = fx.node.map_arg(output.args[0], lambda n: n.meta[SHAPE_KEY])
