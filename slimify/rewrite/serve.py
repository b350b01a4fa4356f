"""Slimmable modules by serving narrow tensors through the attributes forward code reads.

A module is turned slimmable by giving it a subclass of its own class in which ``weight``,
``bias``, ``out_channels``, ``num_heads``… are properties that return the active switch's
version. The module's own forward (nn.Conv2d's, timm's BatchNormAct2d's, any user class's) then
runs unchanged on narrow tensors, and ``isinstance`` still holds. The full tensors stay the
registered parameters, so ``state_dict`` keys and shapes are the original ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from slimify.rewrite.batchnorm import BN_TENSORS
from slimify.rewrite.slicing import cut
from slimify.rules.caches import empty_cache
from slimify.state import SlimState

__all__ = ["SlimData", "make_slimmable", "slim_data", "restore_class", "inference_copies", "SLIM_KEY"]

SLIM_KEY = "_slimify"  # instance attribute holding a module's SlimData

_CLASSES: dict[tuple[type, frozenset[str], frozenset[str], frozenset[str]], type] = {}  # cache of generated subclasses


@dataclass
class SlimData:
    """Per-module plan: for each switch, how each tensor is cut and each attribute's value."""

    state: SlimState
    params: dict[str, list[dict[int, Any]]] = field(default_factory=dict)
    attrs: dict[str, list[Any]] = field(default_factory=dict)
    bn_slots: list[Any] | None = None  # switch → private BatchNorm slot (None: original); configurations: see config_slots.py
    routes: dict[str, list] = field(default_factory=dict, repr=False)  # name → per slot, where it comes from (_route)
    forward_caches: dict[str, tuple[int, Any]] = field(default_factory=dict, repr=False)  # forward code's: (switch, value)
    snapshot: Snapshot = field(default_factory=lambda: Snapshot(), repr=False)  # name → the latest read (see Snapshot)


class Snapshot(dict):
    """name → what the last read at a slot returned, kept so that the next read at that slot
    returns it after one stamp check instead of walking the route: ``(slot, holder)`` for a
    tensor served whole (read from its holder's dict on every access), ``(slot, None, full,
    alias, version, copy, data_ptr)`` for a cut parameter's inference copy. ``alias`` is
    ``full.detach()``: it shares the full tensor's version counter (in-place updates bump it) and
    is a plain tensor, whose ``_version`` reads faster than a Parameter's. ``.to()``/``.half()``
    swap the full tensor's ``.data`` without a new version: the served class's ``_apply`` empties
    the snapshot, and a bare ``param.data = t`` (``vector_to_parameters`` does it) changes the
    full tensor's ``data_ptr``, which every snapshot read compares (~0.17 us; a stale copy would
    be a wrong model).
    Never copied (deepcopy, pickle): a copy's alias would be a tensor of its own, no alias of
    the copied parameter, so the copy starts empty and fills on its first reads."""

    def __reduce__(self) -> tuple:  # deepcopy, copy and pickle all rebuild it from this: empty
        return (Snapshot, ())


# ``torch.compiler.is_compiling()``, spelled out in the getter in one Python frame instead of two
# (it calls ``torch.jit.is_scripting()``): every served read asks, and at batch 1 the frames were a
# measurable share of a narrow forward. Dynamo folds ``is_dynamo_compiling()`` to True while it
# traces (so the flag after it is never read into a graph); torch.export and AOTAutograd set the flag.
_dynamo_compiling = torch.compiler.is_dynamo_compiling
_compiler = torch.compiler


def slim_data(module: nn.Module) -> SlimData | None:
    return module.__dict__.get(SLIM_KEY)


def _route(module: nn.Module, data: SlimData, name: str, s: int) -> tuple:
    """Where ``name`` comes from at slot ``s``, resolved on its first read there: ``(s, dict)`` for
    a tensor served whole (the original, or a switch's private BatchNorm: read from its holder's
    dict on every access, so in-place updates, ``.to()`` and ``load_state_dict`` reach it),
    ``(s, None, slot)`` for a configuration's BatchNorm, ``(s, None, None, dims, is_param, copy)``
    for a cut, ``copy`` being the slot's inference copy (see :func:`_inference_copy`)."""
    if data.bn_slots is not None and name in BN_TENSORS and data.bn_slots[s] is not None:
        slot = data.bn_slots[s]
        if not isinstance(slot, int):  # a width configuration's BatchNorm (rewrite/config_slots.py)
            return (s, None, slot)
        holder = module._modules["slim_bn"]._modules[str(slot)]
        return (s, holder._parameters if name in holder._parameters else holder._buffers)
    is_param = name in module._parameters
    dims = data.params.get(name, [{}] * (s + 1))[s]
    if not dims:
        return (s, module._parameters if is_param else module._buffers)
    return (s, None, None, dims, is_param, [None, -1, -1, None])


def _kept_route(module: nn.Module, data: SlimData, name: str, s: int) -> tuple:
    """:func:`_route`, kept in ``data.routes`` so that later reads at slot ``s`` find it."""
    route = _route(module, data, name, s)
    slots = data.routes.setdefault(name, [])
    slots.extend([None] * (s + 1 - len(slots)))
    slots[s] = route
    return route


def _inference_copy(data: SlimData, name: str, full: torch.Tensor, route: tuple) -> torch.Tensor:
    """Refill a cut route's inference copy: a contiguous copy of the cut, stamped with the full
    tensor's identity, version and data pointer (``.to()``/``.double()`` swap ``.data``: a new
    storage, maybe the same version), so an optimizer step, ``load_state_dict`` or ``.to()`` makes
    the next read copy again. Memory: one copy of each cut parameter per switch served in
    inference, at most the switch's own size (a width-0.5 model's weights, for width 0.5)."""
    s, copy = route[0], route[5]
    if s >= len(data.state.switches):  # configurations (a search visits hundreds): keep the latest only
        for other in data.routes.get(name, [])[len(data.state.switches):]:
            if other is not None and other is not route and len(other) > 5:
                other[5][:] = [None, -1, -1, None]
    copy[:] = [full, full._version, full.data_ptr(), cut(full, route[3]).contiguous()]
    return copy[3]


def inference_copies(data: SlimData) -> dict[tuple[str, int], torch.Tensor]:
    """(name, slot) → the inference copy a cut route holds now: what serving keeps in memory
    beyond the registered tensors (one per switch served in inference, and the latest
    configuration's)."""
    return {(name, route[0]): route[5][3] for name, slots in data.routes.items() for route in slots
            if route is not None and len(route) > 5 and route[5][3] is not None}


def _compiled_read(module: nn.Module, data: SlimData, name: str) -> torch.Tensor | None:
    """A read inside torch.compile: the route is resolved in the graph (a kept route would be a
    guard that every new width trips) and a cut is a view, fused into the graph (a cached copy's
    data-pointer stamp breaks it)."""
    return _read(module, data, name, _route(module, data, name, data.state.index), eager=False)


def _param_property(name: str) -> property:
    def get(self: nn.Module) -> torch.Tensor | None:
        """Runs on every read forward code makes, so the common cases return from the
        snapshot (:class:`Snapshot`) after one compile check and the slot comparison: one dict
        read (a whole tensor), or (an inference copy) the parameter's identity, version and data
        pointer and the autograd switch; anything else takes the route (:func:`_routed_read`)."""
        data: SlimData = self.__dict__[SLIM_KEY]
        if _dynamo_compiling() or _compiler._is_compiling_flag:
            return _compiled_read(self, data, name)
        seen = data.snapshot.get(name)
        if seen is not None and seen[0] == data.state.index:
            if seen[1] is not None:
                return seen[1].get(name)
            full = seen[2]
            if (seen[3]._version == seen[4] and self._parameters.get(name) is full
                    and full.data_ptr() == seen[6] and not torch.is_grad_enabled()):
                return seen[5]
        return _routed_read(self, data, name)

    def set_(self: nn.Module, value: Any) -> None:
        if value is None or isinstance(value, torch.Tensor):
            if name in self._parameters:
                self._parameters[name] = value
            else:
                self._buffers[name] = value
            data = self.__dict__[SLIM_KEY]
            data.routes.pop(name, None)
            data.snapshot.pop(name, None)
            return
        raise AttributeError(f"{name} of a slimmable module cannot be set to {type(value).__name__}")

    return property(get, set_, doc=f"``{name}`` cut to the active switch")


def _routed_read(self: nn.Module, data: SlimData, name: str) -> torch.Tensor | None:
    """A read the snapshot could not serve: the kept route (resolved on the slot's first read)."""
    s = data.state.index
    try:
        route = data.routes[name][s]
    except (KeyError, IndexError):
        route = None
    if route is None:
        route = _kept_route(self, data, name, s)
    return _read(self, data, name, route, eager=True)


def _read(module: nn.Module, data: SlimData, name: str, route: tuple, eager: bool) -> torch.Tensor | None:
    """What a route serves: one dict read (a whole tensor), a configuration's BatchNorm, or a cut
    of the full tensor: a view while autograd is on (gradients and in-place buffer updates reach
    the full tensor) or inside torch.compile (``eager`` false), else the inference copy, compared
    by its stamp and refilled when the full tensor changed. Eager reads leave in the snapshot
    what a later read can check cheaply (a whole tensor, an inference copy)."""
    source = route[1]
    if source is not None:  # one dict read
        if eager:
            data.snapshot[name] = (route[0], source)
        return source.get(name)
    if route[2] is not None:
        return route[2].tensor(module, name)
    full = module._parameters[name] if route[4] else module._buffers.get(name)
    if full is None:
        return None
    if not eager or not route[4] or torch.is_grad_enabled():
        return cut(full, route[3])
    copy = route[5]
    if not (copy[0] is full and copy[1] == full._version and copy[2] == full.data_ptr()):
        _inference_copy(data, name, full, route)
    data.snapshot[name] = (route[0], None, full, full.detach(), copy[1], copy[3], copy[2])
    return copy[3]


def _attr_property(name: str) -> property:
    def get(self: nn.Module) -> Any:
        data: SlimData = self.__dict__[SLIM_KEY]
        return data.attrs[name][data.state.index]

    def set_(self: nn.Module, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__}.{name} follows the width of a slimmable model; "
                             "convert a fresh model to change it")

    return property(get, set_, doc=f"``{name}`` at the active switch")


def _cache_property(name: str) -> property:
    """A cache forward code fills (timm's ``attention_bias_cache``) holds tensors of the switch
    that filled it: the first read after a switch finds it empty, so the tensors are computed
    again at the new width. There is only ever one live cache, so the module's own invalidation
    (timm's ``train()`` and ``_apply``) still reaches everything it holds."""
    def get(self: nn.Module) -> Any:
        data: SlimData = self.__dict__[SLIM_KEY]
        index, value = data.forward_caches[name]
        if index != data.state.index:
            value = empty_cache(value)
            data.forward_caches[name] = (data.state.index, value)
        return value

    def set_(self: nn.Module, value: Any) -> None:
        data: SlimData = self.__dict__[SLIM_KEY]
        data.forward_caches[name] = (data.state.index, value)

    return property(get, set_, doc=f"``{name}``, emptied when the width changes")


def _flat_weights(module: nn.RNNBase) -> list[torch.Tensor | None]:
    return [getattr(module, n) if hasattr(module, n) else None for n in module._flat_weights_names]


# attributes a class derives from its own tensors and keeps (torch rebuilds nn.RNNBase's
# ``_flat_weights``, the list its fused kernel reads, only when it notices other tensors, and
# pickles it): while slimmable they are derived from the served tensors on every read
DERIVED: dict[type, dict[str, Any]] = {nn.RNNBase: {"_flat_weights": _flat_weights}}


def _derived(base: type) -> dict[str, Any]:
    return {name: fn for cls, attrs in DERIVED.items() if issubclass(base, cls) for name, fn in attrs.items()}


def _derived_property(name: str, derive: Any) -> property:
    def set_(self: nn.Module, value: Any) -> None:  # the class refreshing its copy: nothing to keep
        pass

    return property(derive, set_, doc=f"``{name}`` derived from the served tensors")


def _apply(self: nn.Module, fn: Any, *args: Any, **kwargs: Any) -> nn.Module:
    """``nn.Module._apply`` (``.to()``, ``.half()``, ``.cuda()``…), then an empty snapshot:
    it swaps each tensor's ``.data`` without a new version, which the snapshot's check would miss."""
    result = super(type(self), self)._apply(fn, *args, **kwargs)
    self.__dict__[SLIM_KEY].snapshot.clear()
    return result


def make_slimmable(module: nn.Module, data: SlimData) -> None:
    """Swap ``module``'s class for a subclass that serves ``data``'s tensors and attributes."""
    base = type(module)
    tensors = set(data.params)
    if data.bn_slots is not None:
        tensors |= {n for n in BN_TENSORS if n in module._parameters or n in module._buffers}
    key = (base, frozenset(tensors), frozenset(data.attrs), frozenset(data.forward_caches))
    cls = _CLASSES.get(key)
    if cls is None:
        namespace: dict[str, Any] = {name: _param_property(name) for name in tensors}
        namespace.update({name: _attr_property(name) for name in data.attrs})
        namespace.update({name: _cache_property(name) for name in data.forward_caches})
        namespace.update({name: _derived_property(name, fn) for name, fn in _derived(base).items()})
        namespace["_apply"] = _apply
        namespace["__slimify_base__"] = base
        namespace["__module__"] = base.__module__
        namespace["__qualname__"] = base.__qualname__
        cls = type(base.__name__, (base,), namespace)
        _CLASSES[key] = cls
    for name in data.forward_caches:  # the property serves it from now on
        module.__dict__.pop(name, None)
    for name in _derived(base):  # no stale copy of the full tensors (deepcopy, pickle)
        module.__dict__.pop(name, None)
    module.__dict__[SLIM_KEY] = data
    module.__class__ = cls


def restore_class(module: nn.Module, data: SlimData | None = None) -> None:
    """Undo :func:`make_slimmable` (used by export on a copy, whose ``data`` is passed in):
    caches become plain attributes again, empty."""
    data = data if data is not None else module.__dict__.get(SLIM_KEY)
    base = type(module).__dict__.get("__slimify_base__")
    if base is not None:
        module.__class__ = base
        for name, derive in _derived(base).items():  # the plain class keeps its own copy again
            module.__dict__[name] = derive(module)
    module.__dict__.pop(SLIM_KEY, None)
    for name, (_, value) in (data.forward_caches if data is not None else {}).items():
        module.__dict__[name] = empty_cache(value)
