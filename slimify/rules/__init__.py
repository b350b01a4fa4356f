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
    load_rule_files,
    rule,
)

__all__ = ["FUNCTION_RULES", "METHOD_RULES", "MODULE_RULES", "Rule", "rule", "find_module_rule",
           "find_function_rule", "RuleContext", "TensorVal", "ParamVal"]

# Every rule file now, not at the first lookup: loading them imports the timm and torchvision modules
# whose functions they name, and those register the fx leaf functions the tracer must know before it runs.
load_rule_files()
