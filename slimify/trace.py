"""Step 1 of the pipeline: trace a model with torch.fx and record every value's shape (the
recording itself lives in ``shapes.py``).

The tracer reuses timm's and torchvision's own leaf/autowrap rules so their models trace, and
treats every module class that has a channel rule as a leaf (its forward code is then
described by the rule instead of being traced through).
"""
from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.shapes import SHAPE_KEY, VALUE_KEY, record_shapes, state_kept

__all__ = ["TracedModel", "SlimifyTracer", "trace", "SHAPE_KEY", "VALUE_KEY", "WHERE_KEY"]


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
    leaves: frozenset[str] = frozenset()  # module paths kept as leaves because tracing failed inside them
    concrete: bool = False  # traced with values (``trace_concrete.py``): comparisons decided branches

    @property
    def graph(self) -> fx.Graph:
        return self.graph_module.graph


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


def _drop_constants(model: nn.Module) -> None:
    """fx stores tensors that forward code makes from constants on the traced module
    (``_tensor_constant0``); the graph module holds its own references, so the user's model
    gets none of them."""
    for name in [n for n in vars(model) if n.startswith("_tensor_constant")]:
        delattr(model, name)


def graph_module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A GraphModule whose Python code is generated only if it is ever called: analysis only
    interprets the graph, and generating and compiling ``forward`` cost ~30 ms a conversion."""
    try:
        from torch.fx._lazy_graph_module import _make_graph_module, _use_lazy_graph_module
    except ImportError:  # a torch without lazy graph modules: the eager one works the same
        return fx.GraphModule(root, graph, name)
    with _use_lazy_graph_module(True):
        return _make_graph_module(root, graph, name)


def trace(model: nn.Module, example_input: Any, has_rule: Callable[[nn.Module], bool],
          example_kwargs: dict[str, Any] | None = None) -> TracedModel:
    """Trace ``model`` in eval mode and record shapes by running ``example_input`` through the
    graph (on the meta device where possible, ``shapes.record_shapes``). ``example_input``: one
    input, or a tuple of positional inputs; ``example_kwargs``: keyword inputs.

    A model called with tensors only is traced symbolically, as fx does; where that fails (control
    flow on shapes, decorated or ``**kwargs`` forwards, outputs fx cannot store) or the call has
    keyword or non-tensor inputs, it is traced with concrete values instead (``trace_concrete.py``).
    The model's training flag is restored; its parameters, buffers and attributes are not changed.
    """
    from slimify.trace_concrete import ModelInputs
    inputs = ModelInputs.of(example_input, example_kwargs)
    was_training = model.training
    model.eval()
    try:
        symbolic_error = None
        if not inputs.kwargs and all(isinstance(a, torch.Tensor) for a in inputs.args):
            try:
                return _trace_symbolically(model, example_input, has_rule)
            except Exception as e:  # noqa: BLE001 - any failure: trace with concrete values
                symbolic_error = e
        return _trace_with_values(model, inputs, has_rule, symbolic_error)
    finally:
        model.train(was_training)


def _trace_symbolically(model: nn.Module, example_input: Any, has_rule: Callable[[nn.Module], bool]) -> TracedModel:
    tracer = SlimifyTracer(has_rule)
    with state_kept(model):
        graph = tracer.trace(model, concrete_args=_unset_optionals(model, example_input))
    gm = graph_module(tracer.root, graph, type(model).__name__)
    try:
        inputs = example_input if isinstance(example_input, tuple) else (example_input,)
        record_shapes(gm, inputs)
    finally:
        _drop_constants(model)
    return TracedModel(graph_module=gm, root=model)


def _trace_with_values(model: nn.Module, inputs: Any, has_rule: Callable[[nn.Module], bool],
                       symbolic_error: Exception | None) -> TracedModel:
    """The concrete trace (``trace_concrete.py``): its nodes hold their shapes already."""
    from slimify.trace_concrete import trace_concretely
    try:
        gm, tracer = trace_concretely(model, inputs, has_rule)
    except Exception as e:
        raise SlimifyError(f"cannot trace {type(model).__name__} on the example input: {type(e).__name__}: "
                           f"{_first_line(e)}{_model_line(e)}. Check that the model runs on the example input "
                           "(its size, channels and arguments: convert's example_input= and example_kwargs=)"
                           ) from (symbolic_error or e)
    _drop_constants(model)
    return TracedModel(graph_module=gm, root=model, leaves=frozenset(tracer.leaves), concrete=True)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else ""


def _model_line(e: BaseException) -> str:
    """`` (at file:line, in function)``: the innermost frame of model code the error passed."""
    import traceback
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not any(p in f.filename for p in _PLUMBING + ("/torch/", "/slimify/"))]
    return f" (at {frames[-1].filename}:{frames[-1].lineno}, in {frames[-1].name})" if frames else ""
