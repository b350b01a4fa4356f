"""The fx tracer slimify traces with, apart from ``trace.py``'s entry point: the concrete tracer
(``rules/notrace.py``) extends it, and ``trace.py`` falls back to that one (``trace_concrete.py``),
so the tracer itself must sit below both (no import cycle)."""
from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch.fx as fx
import torch.nn as nn

from slimify.analysis.frames import is_tracing
from slimify.analysis.own_names import attr_of, graph_module
from slimify.analysis.shape_pass import WHERE_KEY

__all__ = ["SlimifyTracer", "graph_module", "attr_of"]

_CREATE_PROXY = fx.proxy.TracerBase.create_proxy  # fx's own: the one whose first-read proxy getattr makes here


def _notrace_modules() -> tuple[type, ...]:
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:  # timm is a dependency, but keep the tracer usable without it
        return ()
    return tuple(timm_fx.get_notrace_modules())


def _notrace_functions() -> tuple[Callable[..., Any], ...]:
    try:
        from timm.layers import _fx as timm_fx
    except ImportError:
        return ()
    return tuple(timm_fx.get_notrace_functions())


class SlimifyTracer(fx.Tracer):
    """fx tracer whose leaves are torch.nn's own modules, timm's no-trace modules and every
    module with a slimify channel rule (looked up along the MRO). Every node remembers the line
    of model code that made it (``WHERE_KEY``), so a fixed group's reason can name it: one
    frame lookup per node instead of fx's full stack traces (~1.5 ms a node)."""

    def __init__(self, has_rule: Callable[[nn.Module], bool]) -> None:
        super().__init__(autowrap_functions=_notrace_functions())
        self._has_rule = has_rule
        self._notrace = _notrace_modules()
        self._param_names: tuple[nn.Module, dict[int, tuple[str, nn.Parameter]]] | None = None

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        """fx's lookup, less its cost: on every parameter read in traced code fx walks
        ``root.named_parameters()`` until it meets the parameter (1,756 parameters visited per
        ConvNeXt-V2-atto conversion) and asks ``inspect.signature`` of ``create_proxy`` before its
        first proxy. Here the name comes from a map built once (identity-checked: the first name in
        ``named_parameters()``, as fx finds it), and the proxy from fx's cache or, on a first read, is
        made as fx makes it with this class's ``create_proxy`` (``proxy_factory_fn=None``: shapes not
        constant). Anything else (a subclass's own ``create_proxy``, ``param_shapes_constant``, a
        parameter not registered under the root) goes to fx's own lookup."""
        if isinstance(attr_val, nn.Parameter):
            names = self._param_names
            if names is None or names[0] is not self.root:
                found: dict[int, tuple[str, nn.Parameter]] = {}
                for n, p in self.root.named_parameters():
                    found.setdefault(id(p), (n, p))
                names = self._param_names = (self.root, found)
            hit = names[1].get(id(attr_val))
            if hit is not None and hit[1] is attr_val:
                proxy = parameter_proxy_cache.get(hit[0])
                if proxy is None and not self.param_shapes_constant and type(self).create_proxy is _CREATE_PROXY:
                    proxy = parameter_proxy_cache[hit[0]] = self.create_proxy("get_attr", hit[0], (), {},
                                                                                proxy_factory_fn=None)
                if proxy is not None:
                    return proxy
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self._has_rule(m) or isinstance(m, self._notrace):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None and is_tracing(frame.f_code.co_filename):
            frame = frame.f_back
        if frame is not None:
            node.meta[WHERE_KEY] = (frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name)
        return node
