"""Named extension points (channel rules, importance scores, export formats, CLI commands): one
registry kind for all of them.

A registry maps a name to a function with a one-line help and optional settings, in the order
they were registered. Names are strings (scores, formats, commands) or other hashable keys (the
channel rules: module classes, function objects, Tensor method names). Registries import nothing
heavy, so the CLI builds its choices and help from them without loading torch; the functions
import what they need when called.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

from slimify.errors import SlimifyError

__all__ = ["Registry", "Entry"]


@dataclass(frozen=True)
class Entry:
    name: Any
    fn: Callable[..., Any]
    help: str
    options: dict[str, Any] = field(default_factory=dict)


def _label(name: Any) -> str:
    """How a name reads in an error: a class or function by its name, anything else as written."""
    qualname = getattr(name, "__qualname__", None)
    return qualname if isinstance(qualname, str) else str(name)


class Registry:
    """Entries of one kind (``"importance score"``), looked up by name; ``key`` normalises names
    (export formats: lower-case file suffixes; None: names as given)."""

    def __init__(self, kind: str, key: Callable[[Any], Hashable] | None = None) -> None:
        self.kind = kind
        self._key = key
        self._entries: dict[Hashable, Entry] = {}

    def _norm(self, name: Any) -> Hashable:
        return name if self._key is None else self._key(name)

    def register(self, name: Any, help: str = "", **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@SCORES.register("l1", help="…")`` adds the function under ``name``."""
        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name, fn, help, **options)
            return fn
        return add

    def add(self, name: Any, fn: Callable[..., Any], help: str = "", **options: Any) -> None:
        """Add (or replace) ``fn`` under ``name``; the help defaults to its docstring's first line."""
        key = self._norm(name)
        self._entries[key] = Entry(key, fn, help or (getattr(fn, "__doc__", None) or "").strip().split("\n")[0], options)

    def unregister(self, name: Any) -> None:
        self._entries.pop(self._norm(name), None)

    def get(self, name: Any) -> Entry:
        """The entry of ``name``; an unknown name is an error that lists the known ones."""
        try:
            entry = self._entries.get(self._norm(name))
        except TypeError:  # not a name at all (None for a suffix, a list…)
            entry = None
        if entry is None:
            shown = repr(name) if isinstance(name, str) else _label(name)
            raise SlimifyError(f"unknown {self.kind} {shown}: use one of "
                               f"{', '.join(_label(n) for n in self._entries)}")
        return entry

    def find(self, name: Any) -> Callable[..., Any] | None:
        """The function registered under ``name``, None if there is none (a lookup that may miss:
        an op without a channel rule, a command click reports itself)."""
        entry = self._entries.get(name if self._key is None else self._key(name))  # inlined: a lookup per traced op
        return None if entry is None else entry.fn

    def names(self, where: Callable[[Entry], bool] | None = None) -> tuple[Any, ...]:
        return tuple(n for n, e in self._entries.items() if where is None or where(e))

    def __contains__(self, name: object) -> bool:
        try:
            return self._norm(name) in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))
