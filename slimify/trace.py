"""Step 1 of the pipeline: trace a model with torch.fx and record every value's shape.

The tracer reuses timm's and torchvision's own leaf/autowrap rules so their models trace, and
treats every module class that has a channel rule as a leaf (its forward code is then
described by the rule instead of being traced through).
"""
from __future__ import annotations

import contextlib
import inspect
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_map

from slimify.errors import SlimifyError

__all__ = ["TracedModel", "SlimifyTracer", "trace", "SHAPE_KEY", "VALUE_KEY", "WHERE_KEY"]

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


WHERE_KEY = "slimify.where"  # node.meta key: (file, line, function) of the model code that made the node
_PLUMBING = ("/torch/fx/", "/torch/nn/modules/module.py", "/torch/overrides.py", "/torch/_tensor.py",
             "/torch/_ops.py", "/torch/utils/_device.py", "/slimify/trace.py", "/slimify/rules/")


class SlimifyTracer(fx.Tracer):
    """fx tracer whose leaves are torch.nn's own modules, timm's no-trace modules and every
    module with a slimify channel rule (looked up along the MRO). Every node remembers the line
    of model code that made it (``WHERE_KEY``), so a fixed group's reason can name it: one
    frame lookup per node instead of fx's full stack traces (~1.5 ms a node)."""

    def __init__(self, has_rule: Callable[[nn.Module], bool]) -> None:
        super().__init__(autowrap_functions=_notrace_functions())
        self._has_rule = has_rule
        self._notrace = _notrace_modules()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._has_rule(m) or isinstance(m, self._notrace):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None and any(p in frame.f_code.co_filename for p in _PLUMBING):
            frame = frame.f_back
        if frame is not None:
            node.meta[WHERE_KEY] = (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
        return node


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


def _holds(value: Any, kind: Callable[[Any], bool]) -> bool:
    if kind(value):
        return True
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, (list, tuple)) and any(kind(v) for v in value)


def _holds_proxy(value: Any) -> bool:
    return _holds(value, lambda v: isinstance(v, fx.Proxy))


def _holds_meta(value: Any) -> bool:
    return _holds(value, lambda v: isinstance(v, torch.Tensor) and v.is_meta)


@contextlib.contextmanager
def _state_kept(model: nn.Module, leftover: Callable[[Any], bool] = _holds_proxy) -> Iterator[None]:
    """Forward code that stores state (a cache dict, ``self.last = x``) would keep fx proxies (or
    meta tensors) in the user's model after tracing: put back every attribute, or dict's
    contents, such a value entered."""
    before = {m: {k: (v, dict(v) if isinstance(v, dict) else None) for k, v in vars(m).items()}
              for m in model.modules()}
    try:
        yield
    finally:
        for m, attrs in before.items():
            for name, value in list(vars(m).items()):
                if not leftover(value):
                    continue
                if name not in attrs:
                    delattr(m, name)
                elif isinstance(value, dict) and attrs[name][1] is not None and value is attrs[name][0]:
                    value.clear()
                    value.update(attrs[name][1])
                else:
                    setattr(m, name, attrs[name][0])


def trace(model: nn.Module, example_input: torch.Tensor | tuple[torch.Tensor, ...],
          has_rule: Callable[[nn.Module], bool]) -> TracedModel:
    """Trace ``model`` in eval mode and record shapes by running ``example_input`` through it.

    The model's training flag is restored; its parameters are not changed.
    """
    tracer = SlimifyTracer(has_rule)
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


class _Run(nn.Module):
    """Runs the shape recorder as a module call, so ``functional_call`` can swap in meta tensors."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm

    def forward(self, *inputs: torch.Tensor) -> Any:
        return _ShapeRecorder(self.gm).run(*inputs)


def _tensor_attrs(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """Every tensor the graph reads: parameters, buffers and fx's ``_tensor_constant``s."""
    found = dict(gm.named_parameters(remove_duplicate=False))
    found.update(gm.named_buffers(remove_duplicate=False))
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in found:
            owner, _, name = node.target.rpartition(".")
            value = getattr(gm.get_submodule(owner) if owner else gm, name, None)
            if isinstance(value, torch.Tensor):
                found[node.target] = value
    return found


META_PARAMS_PER_NODE = 30_000  # above this, a meta run is the cheaper way to get the shapes


def _meta_is_cheaper(gm: fx.GraphModule) -> bool:
    """A real run costs about the model's arithmetic (parameters × positions); a run on the meta
    device costs per node (meta kernels of norms and elementwise ops take 0.1-0.8 ms each, an
    LSTM's far more). Measured over the 166 timm models of the coverage list: meta wins above
    ~30k parameters per graph node (median shape recording 0.070 s → 0.053 s, nine models
    slower by more than 5 ms); ``benchmarks/RESULTS.md``, *Convert time*."""
    if any(isinstance(m, nn.RNNBase) for m in gm.modules()):
        return False
    return sum(p.numel() for p in gm.parameters()) > META_PARAMS_PER_NODE * len(gm.graph.nodes)


def _record_shapes(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
    """Run the graph once and note every node's shape: on the meta device when that is cheaper
    (no arithmetic), else for real. Ops that need values (``.item()``, data-dependent sizes) or
    mix devices fail on meta: then one real run records everything."""
    if _meta_is_cheaper(gm):
        meta = {f"gm.{k}": torch.empty_like(v, device="meta") for k, v in _tensor_attrs(gm).items()}
        try:
            with torch.no_grad(), _state_kept(gm, _holds_meta), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.func.functional_call(_Run(gm), meta, tuple(x.to("meta") for x in inputs), strict=False)
            return
        except Exception:  # noqa: BLE001 - any failure means: measure for real
            for node in gm.graph.nodes:
                node.meta.pop(SHAPE_KEY, None)
                node.meta.pop(VALUE_KEY, None)
    with torch.no_grad():
        _ShapeRecorder(gm).run(*inputs)
