"""Containers the model owns (attribute dicts, lists, sets), read, copied and put back through the
methods of the built-in type they extend, never their own: a subclass may refuse to change
(diffusers' ``FrozenDict``, an ``OrderedDict`` whose ``update`` and item assignment raise) or do
more than store (transformers' ``ModelOutput``). Analysis never asks an object of the model to
change; what forward code changed during a trace is put back exactly."""
from __future__ import annotations

from operator import is_
from typing import Any

__all__ = ["builtin_base", "contents", "same_contents", "refill", "copy_container"]


_BASES: dict[type, type] = {}  # type → its built-in base, looked up once per type (analysis reads thousands)


def builtin_base(cls: type) -> type:
    """The built-in container type ``cls`` extends (``OrderedDict`` for ``FrozenDict``)."""
    base = _BASES.get(cls)
    if base is None:
        base = _BASES[cls] = next(c for c in cls.__mro__ if c.__module__ in ("builtins", "collections"))
    return base


def contents(value: Any) -> list[Any] | None:
    """What a dict or list holds, to compare and put back by identity: a dict's keys then its
    values, a list's entries; ``None`` for anything else."""
    cls = type(value)
    if cls is dict:  # most of them (every module's parameter, buffer and submodule dicts): no lookup
        return [*value, *value.values()]
    if isinstance(value, dict):
        base = builtin_base(cls)
        return [*base.keys(value), *base.values(value)]
    if isinstance(value, list):
        return list.copy(value)
    return None


def same_contents(value: Any, kept: list[Any]) -> bool:
    """Whether ``value`` holds the very objects ``kept`` (from :func:`contents`) recorded, in order."""
    now = contents(value)
    return now is not None and len(now) == len(kept) and all(map(is_, now, kept))


def refill(value: Any, kept: list[Any]) -> None:
    """Put a dict's or list's recorded contents (:func:`contents`) back into the same object."""
    if isinstance(value, list):
        list.__setitem__(value, slice(None), kept)
        return
    base, n = builtin_base(type(value)), len(kept) // 2
    base.clear(value)
    for k, v in zip(kept[:n], kept[n:]):
        base.__setitem__(value, k, v)


def copy_container(value: Any) -> Any:
    """A shallow copy of a dict, list or set of any subclass, with the same type, items and instance
    attributes, made without calling the subclass's constructor or mutators (``FrozenDict.copy()``
    builds an empty instance and loses the attributes its config is read through)."""
    cls = type(value)
    if cls in (dict, list, set):
        return value.copy()
    base = builtin_base(cls)
    new = base.__new__(cls)
    base.__init__(new)
    if isinstance(value, dict):
        for k, v in base.items(value):
            base.__setitem__(new, k, v)
    elif isinstance(value, list):
        list.extend(new, value)
    else:
        set.update(new, value)
    if hasattr(value, "__dict__"):
        vars(new).update(vars(value))
    return new
