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
from slimify.rules.dispatch import run_rule
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


def _lookup(value: Any, env: dict[fx.Node, Any]) -> Any:
    return fx.node.map_arg(value, lambda n: env[n])


def _python_value(node: fx.Node) -> Any:
    return node.meta.get(VALUE_KEY)


def analyze(traced: TracedModel, positional_chunks: bool = False) -> ChannelSpace:
    """Annotate nothing, mutate nothing: returns the constraints of every channel.
    ``positional_chunks``: ``chunk`` splits whatever is active (rules/segments.py)."""
    space = ChannelSpace()
    space.positional_chunks = positional_chunks
    ctx = RuleContext(space, traced.root)
    ctx.leaves = traced.leaves  # modules whose tracing failed: traced on their own (``untraced_rule``)
    env: dict[fx.Node, Any] = ctx.values  # rules read earlier values (where a size came from)
    modules = dict(traced.root.named_modules())
    for node in traced.graph.nodes:
        ctx.begin(node)
        shape = node.meta.get(SHAPE_KEY)
        if node.op == "placeholder":
            env[node] = _placeholder(ctx, shape)
        elif node.op == "get_attr":
            env[node] = _get_attr(ctx, traced, node)
        elif node.op == "output":
            _output(ctx, _lookup(node.args[0], env))
        elif not _has_tensor(shape):
            env[node] = _python_value(node)
            if traced.concrete:  # the branch this comparison decided must go the same way at every width
                keep_compared_size(ctx, node)
        else:
            args, kwargs = _lookup(node.args, env), _lookup(node.kwargs, env)
            env[node] = run_rule(ctx, node, modules, list(args), dict(kwargs), untraced_rule)
            _note_reads(space, node, modules, args, kwargs)
        value = env.get(node)
        if isinstance(value, TensorVal):  # most nodes: no generator walk of a container
            space.mark_seen(value.label)
        elif value is not None:
            for t in tensors_in(value):
                if isinstance(t, TensorVal):
                    space.mark_seen(t.label)
    follow_paired_sizes(space, traced.root)
    return space


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
    if isinstance(tensor, torch.Tensor):
        if traced.concrete and not _is_state(traced, owner, name):  # a value forward code computed
            return ctx.fixed(tuple(tensor.shape))  # (anchors, a cached table): no channels
        return ParamVal(owner, name, tensor)
    return tensor


def _is_state(traced: TracedModel, owner: str, name: str) -> bool:
    """A parameter or buffer of the model (fx's ``_tensor_constant`` copies are neither)."""
    try:
        module = traced.root.get_submodule(owner) if owner else traced.root
    except AttributeError:
        return False
    return name in module._parameters or name in module._buffers

