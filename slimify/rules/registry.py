"""The channel rules (op → how channels flow through it), and the one way to add to them.

A rule is ``rule(ctx, args, kwargs) -> value``: the analysed arguments in, the analysed output
out, constraints recorded on ``ctx.space``. A module rule reads the module it runs for and its
path from ``ctx.module`` / ``ctx.path``. Every rule registers with the decorator :func:`rule`,
whose keys say what it is for:

- an ``nn.Module`` class: modules of that class and its subclasses (looked up along the MRO);
- a name such as ``"add"``: the function of that name in torch, ``torch.nn.functional``,
  ``operator``, ``torch.special`` and the Tensor method (a name never replaces a rule an
  explicit key or an earlier name gave);
- a function object (``operator.getitem``) or ``"package.module:function"`` (imported when the
  rules load; skipped when that package is not installed): that function only;
- :func:`method` ``("unfold")``: the Tensor method of that name only.

``fallback=True`` registers module classes whose own MRO has no rule (timm's no-trace modules).
A rule file registers by being imported from here: every module of ``slimify/rules/`` is
imported on the first lookup, so a new rule file needs no import line anywhere.
Ops without a rule are boundaries: they fix the channels they touch (missing rules cost slimming,
never correctness).
"""
from __future__ import annotations

import importlib
import operator
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimify.registry import Registry
from slimify.rules.base import FunctionRule

__all__ = ["Rule", "rule", "method", "find_module_rule", "find_module_rule_by_class", "find_function_rule",
           "load_rule_files", "MODULE_RULES", "FUNCTION_RULES", "METHOD_RULES", "FALLBACK_MODULE_RULES"]

Rule = FunctionRule  # rule(ctx, args, kwargs) -> analysed output

MODULE_RULES = Registry("module rule")  # module class → rule (MRO lookup)
FALLBACK_MODULE_RULES = Registry("fallback module rule")  # module class → rule, used when its MRO has no other rule
FUNCTION_RULES = Registry("function rule")  # function object (torch.cat, operator.add…) → rule
METHOD_RULES = Registry("Tensor method rule")  # Tensor method name ("view", "add_"…) → rule
_EXPLICIT: set[Any] = set()  # function objects and method names given by an explicit key (names never replace them)
_loaded = False


@dataclass(frozen=True)
class _Method:
    name: str


def method(name: str) -> _Method:
    """Key for the Tensor method ``name`` only (``x.unfold(dim, size, step)`` is not ``F.unfold``)."""
    return _Method(name)


def rule(*keys: Any, fallback: bool = False) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule for every key (see the module docstring)."""
    def register(fn: Rule) -> Rule:
        for key in keys:
            _add(key, fn, fallback)
        return fn
    return register


def _namespaces() -> tuple[Any, ...]:
    return (torch, F, operator, torch.Tensor, torch.special)


def _add(key: Any, fn: Rule, fallback: bool) -> None:
    if isinstance(key, type) and issubclass(key, nn.Module):
        (FALLBACK_MODULE_RULES if fallback else MODULE_RULES).add(key, fn)
    elif isinstance(key, _Method):
        METHOD_RULES.add(key.name, fn)
        _EXPLICIT.add(key.name)
    elif isinstance(key, str) and ":" in key:
        target = _import_function(key)
        if target is not None:
            _add_function(target, fn)
    elif isinstance(key, str):
        if key not in _EXPLICIT and key not in METHOD_RULES:
            METHOD_RULES.add(key, fn)
        for ns in _namespaces():
            target = getattr(ns, key, None)
            if callable(target) and target not in _EXPLICIT and target not in FUNCTION_RULES:
                FUNCTION_RULES.add(target, fn)
    elif callable(key):
        _add_function(key, fn)
    else:
        raise TypeError(f"cannot register a channel rule for {key!r}")


def _add_function(target: Any, fn: Rule) -> None:
    FUNCTION_RULES.add(target, fn)
    _EXPLICIT.add(target)


def _import_function(key: str) -> Any:
    """``"timm.models.swin_transformer:window_reverse"`` → the function, None if not installed."""
    module_name, _, name = key.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, name, None)


def load_rule_files() -> None:
    """Import every module of this package once: each rule file registers its rules on import."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{info.name}")


def find_module_rule(module: nn.Module) -> Rule | None:
    return find_module_rule_by_class(type(module))


def find_module_rule_by_class(cls: type) -> Rule | None:
    load_rule_files()
    for base in cls.__mro__:
        found = MODULE_RULES.find(base)
        if found is not None:
            return found
        fallback = FALLBACK_MODULE_RULES.find(base)
        if fallback is not None and not any(b in MODULE_RULES for b in base.__mro__):
            return fallback
    return None


def find_function_rule(op: str, target: Any) -> Rule | None:
    """The rule of a ``call_function`` (by function object) or ``call_method`` (by name) node."""
    load_rule_files()
    return (METHOD_RULES if op == "call_method" else FUNCTION_RULES).find(target)
