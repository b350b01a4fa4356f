"""Run the rule of one graph node: the per-node step of ``analysis/walk.py`` and of the concrete
traces of ``rules/notrace.py`` (one dispatch for both, so neither imports the other)."""
from __future__ import annotations

from typing import Any

import torch.fx as fx

from slimify.rules.base import ParamVal, RuleContext, TensorVal, describe
from slimify.rules.elementwise import fixed_output
from slimify.rules.modules import unknown_module
from slimify.rules.registry import find_function_rule, find_module_rule

__all__ = ["run_rule"]


def run_rule(ctx: RuleContext, node: fx.Node, modules: dict, args: list, kwargs: dict) -> Any:
    """The analysed output of ``node`` from its analysed ``args`` and ``kwargs``."""
    if node.op == "call_module":
        ctx.module, ctx.path = modules[node.target], node.target
        rule = find_module_rule(ctx.module)
        return (unknown_module if rule is None else rule)(ctx, args, kwargs)
    rule = find_function_rule(node.op, node.target)
    if node.target is getattr_builtin and args and isinstance(args[0], (TensorVal, ParamVal)):
        rule = None
    if rule is None:
        ctx.fix_all([args, kwargs], f"no channel rule for {describe(node)}")
        return fixed_output(ctx)
    return rule(ctx, args, kwargs)


getattr_builtin = getattr
