"""Step 1 of the pipeline: trace a model with torch.fx and record every value's shape.

The tracer reuses timm's and torchvision's own leaf/autowrap rules so their models trace, and
treats every module class that has a channel rule as a leaf (its forward code is then
described by the rule instead of being traced through).
"""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_map

from slimify.errors import SlimifyError

__all__ = ["TracedModel", "SlimifyTracer", "trace", "with_stack_traces", "SHAPE_KEY", "VALUE_KEY"]

SHAPE_KEY = "slimify.shape"  # node.meta key: torch.Size (or a pytree of them) of the node's value
VALUE_KEY = "slimify.value"  # node.meta key: small non-tensor values (ints, tuples) seen while running


def _notrace_modules() -> tuple[type, ...]:
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # timm is a dependency, but keep the tracer usable without it
        return ()
    return tuple(timm_fx.get_notrace_modules())


def _notrace_functions() -> tuple[Callable[..., Any], ...]:
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:
        return ()
    return tuple(timm_fx.get_notrace_functions())


class SlimifyTracer(fx.Tracer):
    """fx tracer whose leaves are torch.nn's own modules, timm's no-trace modules and every
    module with a slimify channel rule (looked up along the MRO)."""

    def __init__(self, has_rule: Callable[[nn.Module], bool], stack_traces: bool = False) -> None:
        super().__init__(autowrap_functions=_notrace_functions())
        self.record_stack_traces = stack_traces  # costs ~1.5 ms a node: only to explain fixed groups
        self._has_rule = has_rule
        self._notrace = _notrace_modules()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._has_rule(m) or isinstance(m, self._notrace):
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass
class TracedModel:
    """The fx graph of a model, every node annotated with ``node.meta[SHAPE_KEY]``."""

    graph_module: fx.GraphModule
    root: nn.Module  # the user's model (the graph module shares its submodules)

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and writes each node's output shape into ``node.meta`` (like
    torch.fx.passes.shape_prop, but keeping small python values too, for reshape rules)."""

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as e:  # add the node to the error, as torch.fx's own passes do
            raise SlimifyError(f"running node {n.format_node()} failed while recording shapes: {e}") from e
        n.meta[SHAPE_KEY] = tree_map(lambda v: v.shape if isinstance(v, torch.Tensor) else None, result)
        if isinstance(result, (int, float, bool, tuple, list, torch.Size)) and not _holds_tensor(result):
            n.meta[VALUE_KEY] = result
        return result


def _holds_tensor(value: Any) -> bool:
    found = []
    tree_map(lambda v: found.append(v) if isinstance(v, torch.Tensor) else None, value)
    return bool(found)


def _unset_optionals(model: nn.Module, example_input: Any) -> dict[str, Any] | None:
    """forward's arguments beyond the example inputs keep their plain defaults (``None``, a bool, a
    number) in the graph, so ``if mask is not None or is_causal`` takes the branch a call takes
    (Hiera's ``mask=None``, timm ViT's ``attn_mask=None, is_causal=False``)."""
    given = len(example_input) if isinstance(example_input, tuple) else 1
    params = list(inspect.signature(model.forward).parameters.values())[given:]
    plain = (type(None), bool, int, float, str)
    unset = {p.name: p.default for p in params if isinstance(p.default, plain)
             and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return unset or None


def _holds_proxy(value: Any) -> bool:
    if isinstance(value, fx.Proxy):
        return True
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, (list, tuple)) and any(isinstance(v, fx.Proxy) for v in value)


@contextlib.contextmanager
def _state_kept(model: nn.Module) -> Iterator[None]:
    """Forward code that stores state (a cache dict, ``self.last = x``) would keep fx proxies in
    the user's model after tracing: put back every attribute, or dict's contents, a proxy entered."""
    before = {m: {k: (v, dict(v) if isinstance(v, dict) else None) for k, v in vars(m).items()}
              for m in model.modules()}
    try:
        yield
    finally:
        for m, attrs in before.items():
            for name, value in list(vars(m).items()):
                if not _holds_proxy(value):
                    continue
                if name not in attrs:
                    delattr(m, name)
                elif isinstance(value, dict) and attrs[name][1] is not None and value is attrs[name][0]:
                    value.clear()
                    value.update(attrs[name][1])
                else:
                    setattr(m, name, attrs[name][0])


def trace(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...],
          has_rule: Callable[[nn.Module], bool], stack_traces: bool = False) -> TracedModel:
    """Trace ``model`` in eval mode and record shapes by running ``example_input`` through it.

    The model's training flag is restored; its parameters are not changed.
    """
    tracer = SlimifyTracer(has_rule, stack_traces)
    was_training = model.training
    model.eval()
    try:
        try:
            with _state_kept(model):
                graph = tracer.trace(model, concrete_args=_unset_optionals(model, example_input))
        except Exception as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise SlimifyError(f"torch.fx cannot trace {type(model).__name__}: {type(e).__name__}: {first}") from e
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        _record_shapes(gm, inputs)
    finally:
        model.train(was_training)
    return TracedModel(graph_module=gm, root=model)


def with_stack_traces(traced: TracedModel, has_rule: Callable[[nn.Module], bool],
                      example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> TracedModel:
    """Trace again recording source lines (to explain fixed groups), reusing the shapes."""
    tracer = SlimifyTracer(has_rule, stack_traces=True)
    was_training = traced.root.training
    traced.root.eval()
    try:
        with _state_kept(traced.root):
            graph = tracer.trace(traced.root, concrete_args=_unset_optionals(traced.root, example_input))
    finally:
        traced.root.train(was_training)
    old = {n.name: n.meta for n in traced.graph.nodes}
    gm = fx.GraphModule(tracer.root, graph, traced.graph_module.__class__.__name__)
    if all(n.name in old for n in graph.nodes):
        for n in graph.nodes:
            for key in (SHAPE_KEY, VALUE_KEY):
                if key in old[n.name]:
                    n.meta[key] = old[n.name][key]
    else:
        _record_shapes(gm, example_input if isinstance(example_input, tuple) else (example_input,))
    return TracedModel(graph_module=gm, root=traced.root)


def _record_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    # A real run: fake tensors would avoid the compute but cost 5-10x more in dispatch overhead.
    with torch.no_grad():
        _ShapeRecorder(gm).run(*inputs)
