"""A model's names that a GraphModule uses itself: a submodule called ``meta``, ``graph`` or
``code`` must not clash with the GraphModule the tracers build over the model (fx copies each
node's target onto it by name). The GraphModule holds such a submodule under another name, the
nodes keep the model's paths, and :func:`attr_of` finds what a path names.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

__all__ = ["graph_module", "attr_of"]

_ESCAPE = "_slimify_model_"  # prefix of a model's attribute whose name a GraphModule uses itself
_ESCAPES = "_slimify_escapes"  # GraphModule attribute: the model's name → the escaped one
_ATTR_OPS = ("get_attr", "call_module")


def graph_module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """A GraphModule whose Python code is generated only if it is ever called: analysis only
    interprets the graph, and generating and compiling ``forward`` cost ~30 ms a conversion.

    A model's submodule may have the name of one of the GraphModule's own attributes (``meta``,
    ``graph``, ``code``…): the GraphModule then holds it under another name, the nodes keep the
    model's paths, and :func:`attr_of` finds it (the model is never written to)."""
    clashing = {t.partition(".")[0] for t in _targets(graph)} & _own_names()
    if not clashing:
        return _make(root, graph, name)
    escape = {first: f"{_ESCAPE}{first}" for first in clashing}
    shim = nn.Module()  # the model's first atoms, the clashing ones under their escaped names
    shim.training = root.training
    for first in {t.partition(".")[0] for t in _targets(graph)}:
        value = _child(root, first)
        store = shim._modules if isinstance(value, nn.Module) else shim._parameters \
            if isinstance(value, nn.Parameter) else shim._buffers if isinstance(value, torch.Tensor) else shim.__dict__
        store[escape.get(first, first)] = value
    original = {}
    for node in graph.nodes:
        if node.op in _ATTR_OPS and node.target.partition(".")[0] in escape:
            original[node] = node.target
            first, dot, rest = node.target.partition(".")
            node.target = escape[first] + dot + rest
    try:
        gm = _make(shim, graph, name)
    finally:
        for node, target in original.items():
            node.target = target
    gm.__dict__[_ESCAPES] = escape
    return gm


def attr_of(gm: fx.GraphModule, target: str) -> Any:
    """What ``target`` (a node's target: the model's path) names in ``gm`` (see :func:`graph_module`)."""
    first, dot, rest = target.partition(".")
    value = _child(gm, gm.__dict__.get(_ESCAPES, {}).get(first, first))
    for atom in rest.split(".") if dot else ():
        value = _child(value, atom)
    return value


def _child(obj: Any, name: str) -> Any:
    """``obj.name``, a registered submodule, parameter or buffer first (a module registered as
    ``training`` is shadowed by the flag for ``getattr``)."""
    if isinstance(obj, nn.Module):
        for store in (obj._modules, obj._parameters, obj._buffers):
            if name in store:
                return store[name]
    return getattr(obj, name)


def _targets(graph: fx.Graph) -> list[str]:
    return [node.target for node in graph.nodes if node.op in _ATTR_OPS]


@functools.lru_cache(maxsize=1)
def _own_names() -> frozenset[str]:
    """Names a GraphModule has itself (its attributes, properties and methods)."""
    gm = fx.GraphModule(nn.Module(), fx.Graph())
    return frozenset(vars(gm)) | frozenset(dir(type(gm)))


def _make(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    try:
        from torch.fx._lazy_graph_module import _make_graph_module, _use_lazy_graph_module
    except ImportError:  # a torch without lazy graph modules: the eager one works the same
        return fx.GraphModule(root, graph, name)
    with _use_lazy_graph_module(True):
        return _make_graph_module(root, graph, name)
