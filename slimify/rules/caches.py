"""Attributes in which forward code caches a tensor it derives from parameters: timm's
``attention_bias_cache`` holds, per device, the per-head bias table gathered in eval mode.

A derived tensor has the width of the switch that computed it, so a cache must never outlive a
switch: a converted module serves each declared cache through a property that empties it when
the width changes (``slimify/rewrite/serve.py``). Analysis traces with every cache empty, so the
trace sees the computation (whose heads follow the width), never a cached constant.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch.nn as nn

__all__ = ["CACHES", "CONVENTIONAL", "empty_cache", "per_width_cache", "cache_attrs", "empty_caches", "caches_emptied"]

CACHES: dict[type, tuple[str, ...]] = {}  # module class → names of its cache attributes (MRO lookup)
# timm declares its caches as class annotations (``attention_bias_cache: Dict[str, Tensor]`` on
# LeViT's, EfficientFormer's, EfficientFormerV2's, TinyViT's and EfficientViT's attention)
CONVENTIONAL = ("attention_bias_cache",)


def empty_cache(value: Any) -> Any:
    """An empty cache of ``value``'s kind: ``{}`` for a dict, ``None`` for a cached tensor."""
    return type(value)() if isinstance(value, (dict, list, set)) else None


def per_width_cache(cls: type[nn.Module], *names: str) -> None:
    """Declare ``names`` cache attributes of ``cls`` (and its subclasses)."""
    CACHES[cls] = tuple(names)
    _declared.cache_clear()


@functools.lru_cache(maxsize=None)
def _declared(cls: type) -> tuple[str, ...]:
    for base in cls.__mro__:
        if base in CACHES:
            return CACHES[base]
    annotated = {n for base in cls.__mro__ for n in base.__dict__.get("__annotations__", {})}
    return tuple(n for n in CONVENTIONAL if n in annotated)


def cache_attrs(module: nn.Module) -> tuple[str, ...]:
    """The cache attributes ``module`` holds: declared for its class, else annotated by name, else
    a dict of the conventional name (transformers' LeViT sets ``self.attention_bias_cache = {}``)."""
    declared = _declared(type(module))
    if declared:
        found = tuple(n for n in declared if hasattr(module, n))
        if found:
            return found
    own = vars(module)
    if own.keys().isdisjoint(CONVENTIONAL):  # nearly every module: asked on each walk of the tree
        return ()
    return tuple(n for n in CONVENTIONAL if isinstance(own.get(n), dict))


def empty_caches(model: nn.Module) -> None:
    """Empty every cache of ``model`` (used on copies that analysis traces)."""
    for module in model.modules():
        for name in cache_attrs(module):
            setattr(module, name, empty_cache(getattr(module, name)))


@contextlib.contextmanager
def caches_emptied(model: nn.Module) -> Iterator[None]:
    """Run analysis with the caches empty and give ``model`` its own cache objects back after:
    a filled cache would be traced as a constant, and a tracer's values must not stay behind."""
    saved: list[tuple[nn.Module, str, Any]] = [(m, n, getattr(m, n)) for m in model.modules()
                                               for n in cache_attrs(m)]
    for module, name, value in saved:
        setattr(module, name, empty_cache(value))
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
