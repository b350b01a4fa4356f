"""The one walk of a traced graph through the rule table, with two uses:

* the model's graph (``analysis/walk.py``, :class:`ModelSteps` there): its inputs are model
  inputs, fixed; its output is fixed, or padded back if it holds features; a parameter read
  notes the channels it reads; a size compared in a branch of a concrete trace keeps its width;
* a no-trace module's own graph, traced concretely inside the model's walk
  (``rules/notrace.py``, :class:`ModuleSteps` there): its inputs are the values the outer walk
  already analysed, its output is handed back to that walk as the module's value, and its
  tensor constants and plain values come from the concrete tracer's record.

What both share lives here: node order, the current node of the :class:`RuleContext`, argument
lookup, the rule run (with the rule of a module fx cannot trace as the fallback) and marking every
channel that appears in an activation. What differs is a :class:`GraphSteps`, named per use, so
the differences are written down once instead of being two loops that drift apart.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from slimify.rules.base import ParamVal, RuleContext, TensorVal, tensors_in
from slimify.rules.dispatch import run_rule

__all__ = ["GraphSteps", "walk_nodes", "attr_value"]


class GraphSteps:
    """The per-use steps of :func:`walk_nodes`: how a graph's inputs, attributes, plain (tensor-free)
    values and output are read, and what a use notes after a rule ran."""

    def placeholder(self, ctx: RuleContext, node: fx.Node) -> Any:
        raise NotImplementedError

    def get_attr(self, ctx: RuleContext, node: fx.Node) -> Any:
        raise NotImplementedError

    def holds_tensor(self, node: fx.Node) -> bool:
        """Whether the node's value holds a tensor (else it is a plain value: no rule runs)."""
        raise NotImplementedError

    def plain_value(self, ctx: RuleContext, node: fx.Node) -> Any:
        raise NotImplementedError

    def called(self, ctx: RuleContext, node: fx.Node, args: Any, kwargs: Any) -> None:
        """After the rule of ``node`` ran on ``args`` and ``kwargs`` (nothing by default)."""

    def output(self, ctx: RuleContext, outputs: Any) -> Any:
        """The graph's outputs, analysed: what :func:`walk_nodes` returns."""
        raise NotImplementedError


def walk_nodes(ctx: RuleContext, graph: fx.Graph, modules: dict[str, nn.Module], steps: GraphSteps,
               fallback: Callable[[RuleContext], Any] | None) -> Any:
    """Run the rule table over ``graph`` in node order, keeping each node's analysed value in
    ``ctx.values`` (rules read earlier values: where a size came from). Returns what
    ``steps.output`` makes of the output node's value (fx puts the output node last), else None.
    ``fallback``: the rule of a module without one (``rules/notrace.py``'s ``untraced_rule``)."""
    values: dict[fx.Node, Any] = ctx.values
    seen = ctx.space.mark_seen
    lookup = values.__getitem__
    for node in graph.nodes:
        ctx.begin(node)
        op = node.op
        if op == "placeholder":
            value = steps.placeholder(ctx, node)
        elif op == "get_attr":
            value = steps.get_attr(ctx, node)
        elif op == "output":
            return steps.output(ctx, fx.node.map_arg(node.args[0], lookup))
        elif not steps.holds_tensor(node):
            value = steps.plain_value(ctx, node)
        else:
            args, kwargs = fx.node.map_arg(node.args, lookup), fx.node.map_arg(node.kwargs, lookup)
            value = run_rule(ctx, node, modules, list(args), dict(kwargs), fallback)
            steps.called(ctx, node, args, kwargs)
        values[node] = value
        if isinstance(value, TensorVal):  # most nodes: no generator walk of a container
            seen(value.label)
        elif value is not None:
            for t in tensors_in(value):
                if isinstance(t, TensorVal):
                    seen(t.label)
    return None


def attr_value(ctx: RuleContext, target: str, value: Any, computed: bool) -> Any:
    """A ``get_attr`` node's analysed value: anything but a tensor as it is; a tensor forward code
    computed (``computed``: anchors, a cached table, fx's ``_tensor_constant`` copies) as fixed
    channels; a parameter or buffer as a :class:`ParamVal`. Which tensors count as computed is the
    steps' to say: each use knows it from a different record."""
    if not isinstance(value, torch.Tensor):
        return value
    if computed:
        return ctx.fixed(tuple(value.shape))
    owner, _, name = target.rpartition(".")
    return ParamVal(owner, name, value)
