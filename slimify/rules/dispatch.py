"""Run the rule of one graph node: the per-node step of ``analysis/walk.py`` and of the concrete
traces of ``rules/notrace.py`` (one dispatch for both, so neither imports the other)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.fx as fx

from slimify.rules.base import ParamVal, RuleContext, TensorVal, describe_node
from slimify.rules.elementwise import fixed_output
from slimify.rules.modules import unknown_module
from slimify.rules.registry import Rule, find_function_rule, find_module_rule

__all__ = ["run_rule"]


def run_rule(ctx: RuleContext, node: fx.Node, modules: dict, args: list, kwargs: dict,
             untraced: Callable[[RuleContext], Rule | None] | None = None) -> Any:
    """The analysed output of ``node`` from its analysed ``args`` and ``kwargs``. ``untraced``:
    the rule for a module without one that fx could not trace through, if any
    (``rules/notrace.py``'s ``untraced_rule``; passed in, as notrace imports this module)."""
    if node.op == "call_module":
        ctx.module, ctx.path = modules[node.target], node.target
        rule = find_module_rule(ctx.module)
        if rule is None and untraced is not None:
            rule = untraced(ctx)
        return (unknown_module if rule is None else rule)(ctx, args, kwargs)
    rule = find_function_rule(node.op, node.target)
    if node.target is getattr_builtin and len(args) == 2 and isinstance(args[0], tuple) and args[1] in _RETURN_FIELDS:
        return args[0][_RETURN_FIELDS[args[1]]]  # ``x.max(dim=1).values``: rules give (values, indices)
    if node.target is getattr_builtin and args and isinstance(args[0], (TensorVal, ParamVal)):
        rule = None
    if rule is None:
        ctx.fix_all([args, kwargs], f"no channel rule for {describe_node(node)}")
        return fixed_output(ctx)
    return rule(ctx, args, kwargs)


getattr_builtin = getattr
_RETURN_FIELDS = {"values": 0, "indices": 1}  # torch.return_types of max/min/sort/topk/kthvalue/median/mode
