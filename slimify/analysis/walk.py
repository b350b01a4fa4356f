"""Step 2 of the pipeline: walk the traced graph with the rule table and collect every
channel constraint into a :class:`ChannelSpace`. Reads the model, never changes it."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from slimify.analysis.own_names import attr_of
from slimify.analysis.paired_sizes import follow_paired_sizes
from slimify.analysis.space import OUTPUT_REASON, ChannelSpace
from slimify.analysis.trace import SHAPE_KEY, VALUE_KEY, TracedModel
from slimify.rules import ParamVal, RuleContext, TensorVal
from slimify.rules.base import tensors_in
from slimify.rules.graph_walk import GraphSteps, attr_value, walk_nodes
from slimify.rules.literal_sizes import keep_compared_size
from slimify.rules.notrace import untraced_rule

__all__ = ["analyze"]

_PARAMETERS = torch.nn.Module.parameters  # a class that overrides it is asked through its own


def _has_tensor(shape: Any) -> bool:
    if isinstance(shape, torch.Size):
        return True
    if isinstance(shape, (list, tuple)):
        return any(_has_tensor(s) for s in shape)
    if isinstance(shape, dict):
        return any(_has_tensor(s) for s in shape.values())
    return False


def analyze(traced: TracedModel, positional_chunks: bool = False) -> ChannelSpace:
    """Annotate nothing, mutate nothing: returns the constraints of every channel.
    ``positional_chunks``: ``chunk`` splits whatever is active (rules/segments.py)."""
    space = ChannelSpace()
    space.positional_chunks = positional_chunks
    ctx = RuleContext(space, traced.root)
    ctx.leaves = traced.leaves  # modules whose tracing failed: traced on their own (``untraced_rule``)
    modules = dict(traced.root.named_modules())
    walk_nodes(ctx, traced.graph, modules, ModelSteps(traced, modules), untraced_rule)
    follow_paired_sizes(space, traced.root)
    return space


class ModelSteps(GraphSteps):
    """The model's graph (:func:`walk_nodes`' first use): shapes and plain values come from the
    shape pass's record on each node; inputs and outputs are the model's, so their channels are
    fixed (features may be padded back); layers with parameters note the channels they read; in a
    concrete trace, a size compared in a branch keeps its width (the branch must go the same way
    at every width). A no-trace module's graph is walked with ``rules/notrace.py``'s steps."""

    def __init__(self, traced: TracedModel, modules: dict[str, torch.nn.Module]) -> None:
        self.traced, self.modules = traced, modules

    def placeholder(self, ctx: RuleContext, node: fx.Node) -> Any:
        return _placeholder(ctx, node.meta.get(SHAPE_KEY))

    def get_attr(self, ctx: RuleContext, node: fx.Node) -> Any:
        return _get_attr(ctx, self.traced, node)

    def holds_tensor(self, node: fx.Node) -> bool:
        return _has_tensor(node.meta.get(SHAPE_KEY))

    def plain_value(self, ctx: RuleContext, node: fx.Node) -> Any:
        if self.traced.concrete:  # the branch this comparison decided must go the same way at every width
            keep_compared_size(ctx, node)
        return node.meta.get(VALUE_KEY)

    def called(self, ctx: RuleContext, node: fx.Node, args: Any, kwargs: Any) -> None:
        _note_reads(ctx.space, node, self.modules, args, kwargs)

    def output(self, ctx: RuleContext, outputs: Any) -> None:
        _output(ctx, outputs)


def _output(ctx: RuleContext, outputs: Any) -> None:
    """Model outputs keep their size, except features, which may slim and be padded back
    (``ChannelSpace.pad_output``): one tensor with channels along its last dim only, or a list or
    tuple of feature maps (a backbone's stages: timm's ``features_only``), each with its channels
    along dim 1 only."""
    if isinstance(outputs, TensorVal) and outputs.ndim >= 2 and _carries_only(outputs, outputs.ndim - 1):
        ctx.space.pad_output(outputs.label)
        return
    if isinstance(outputs, (list, tuple)) and outputs and not hasattr(outputs, "_fields") \
            and all(isinstance(t, TensorVal) and t.ndim >= 3 and _carries_only(t, 1) for t in outputs):
        ids = [ctx.channel_ids(t, 1) for t in outputs]
        ctx.space.pad_output(np.concatenate(ids), [(i, 1, len(c)) for i, c in enumerate(ids)])
        return
    ctx.fix_all([outputs], OUTPUT_REASON)


def _carries_only(t: TensorVal, dim: int) -> bool:
    """Channel ids vary along ``dim`` and along no other dim."""
    return t.carries(dim) and all(n == 1 for d, n in enumerate(t.label.shape) if d != dim)


def _note_reads(space: ChannelSpace, node: fx.Node, modules: dict, args: Any, kwargs: Any) -> None:
    """Channels that a layer with parameters reads: a module with parameters, or forward code
    using a parameter (``F.linear(x, self.weight)``)."""
    inputs = list(tensors_in([args, kwargs]))
    if node.op == "call_module":
        module = modules[node.target]  # its own parameters answer without a walk of its children
        reads = (type(module).parameters is _PARAMETERS and any(p is not None for p in module._parameters.values())) \
            or next(module.parameters(), None) is not None
    else:
        reads = any(isinstance(t, ParamVal) for t in inputs)
    if reads:
        for t in inputs:
            if isinstance(t, TensorVal):
                space.mark_read(t.label)


def _placeholder(ctx: RuleContext, shape: Any) -> Any:
    """A model input: fixed channels. A container input (a list of images) holds one per tensor."""
    if isinstance(shape, (list, tuple)) and not isinstance(shape, torch.Size):
        return type(shape)(_placeholder(ctx, s) for s in shape)
    if isinstance(shape, dict):
        return {k: _placeholder(ctx, s) for k, s in shape.items()}
    if not isinstance(shape, torch.Size):
        return None
    val = ctx.fixed(tuple(shape))
    if len(shape) >= 2:  # report model inputs as fixed channels, with their reason
        ids = ctx.space.new_var(shape[1], "model input", producer=False)
        ctx.space.fix(ids, "model input channels")
        val = ctx.with_dim(val, 1, ids, tuple(shape))
    return val


def _get_attr(ctx: RuleContext, traced: TracedModel, node: fx.Node) -> Any:
    owner, _, name = node.target.rpartition(".")
    value = attr_of(traced.graph_module, owner) if owner else traced.graph_module
    tensor = getattr(value, name)
    # in a concrete trace, a tensor that is no parameter or buffer is a value forward code computed
    computed = isinstance(tensor, torch.Tensor) and traced.concrete and not _is_state(traced, owner, name)
    return attr_value(ctx, node.target, tensor, computed)


def _is_state(traced: TracedModel, owner: str, name: str) -> bool:
    """A parameter or buffer of the model (fx's ``_tensor_constant`` copies are neither)."""
    try:
        module = traced.root.get_submodule(owner) if owner else traced.root
    except AttributeError:
        return False
    return name in module._parameters or name in module._buffers

