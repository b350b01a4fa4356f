"""Step 1 of the pipeline: trace a model with torch.fx and record every value's shape (the
recording itself lives in ``shapes.py``).

The tracer reuses timm's and torchvision's own leaf/autowrap rules so their models trace, and
treats every module class that has a channel rule as a leaf (its forward code is then
described by the rule instead of being traced through).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from slimify.analysis.example_inputs import ExampleCall
from slimify.analysis.frames import is_library
from slimify.analysis.shape_pass import SHAPE_KEY, VALUE_KEY, WHERE_KEY, record_shapes, state_kept
from slimify.analysis.tracer import SlimifyTracer, graph_module
from slimify.errors import SlimifyError

__all__ = ["TracedModel", "SlimifyTracer", "graph_module", "trace", "SHAPE_KEY", "VALUE_KEY", "WHERE_KEY"]


@dataclass
class TracedModel:
    """The fx graph of a model, every node annotated with ``node.meta[SHAPE_KEY]``."""

    graph_module: fx.GraphModule
    root: nn.Module  # the user's model (the graph module shares its submodules)
    leaves: frozenset[str] = frozenset()  # module paths kept as leaves because tracing failed inside them
    concrete: bool = False  # traced with values (``analysis/trace_concrete.py``): comparisons decided branches

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


def trace(model: nn.Module, example_input: Any, has_rule: Callable[[nn.Module], bool],
          example_kwargs: dict[str, Any] | None = None) -> TracedModel:
    """Trace ``model`` in eval mode and record shapes by running ``example_input`` through the
    graph (on the meta device where possible, ``shapes.record_shapes``). ``example_input``: one
    input, or a tuple of positional inputs; ``example_kwargs``: keyword inputs.

    A model called with tensors only is traced symbolically, as fx does; where that fails (control
    flow on shapes, decorated or ``**kwargs`` forwards, outputs fx cannot store) or the call has
    keyword or non-tensor inputs, it is traced with concrete values instead (``analysis/trace_concrete.py``).
    Every module's training flag is restored; its parameters, buffers and attributes are not changed.
    """
    inputs = ExampleCall.of(example_input, example_kwargs)
    training = [m for m in model.modules() if m.training]  # put back exactly these: not every module
    for m in training:  # ``model.eval()`` walks the tree twice more (eval, then train(was_training))
        m.training = False
    try:
        symbolic_error = None
        if not inputs.kwargs and all(isinstance(a, torch.Tensor) for a in inputs.args):
            try:
                return _trace_symbolically(model, example_input, has_rule)
            except Exception as e:  # noqa: BLE001 - any failure: trace with concrete values
                symbolic_error = e
        return _trace_with_values(model, inputs, has_rule, symbolic_error)
    finally:
        for m in training:
            m.training = True


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
    """The concrete trace (``analysis/trace_concrete.py``): its nodes hold their shapes already."""
    from slimify.analysis.trace_concrete import trace_concretely
    try:
        gm, tracer = trace_concretely(model, inputs, has_rule)
    except Exception as e:
        if isinstance(e, SlimifyError):  # already says what is wrong (a model replacing its own layers)
            raise
        if isinstance(symbolic_error, SlimifyError):  # the symbolic graph ran and failed on the example:
            raise symbolic_error from symbolic_error.__cause__  # that error names the model's line (``shape_pass._cannot_run``)
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
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not is_library(f.filename)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno}, in {frames[-1].name})" if frames else ""
