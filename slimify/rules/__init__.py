"""Channel rules: how channels flow through each op (``registry.py`` holds the one table and the
one way to register; each other file registers the rules of a family of ops when imported)."""
from __future__ import annotations

from slimify.rules.base import ParamVal, RuleContext, TensorVal
from slimify.rules.registry import (
                                    FUNCTION_RULES,
                                    METHOD_RULES,
                                    MODULE_RULES,
                                    Rule,
                                    find_function_rule,
                                    find_module_rule,
                                    rule,
)

__all__ = ["FUNCTION_RULES", "METHOD_RULES", "MODULE_RULES", "Rule", "rule", "find_module_rule",
           "find_function_rule", "RuleContext", "TensorVal", "ParamVal"]
