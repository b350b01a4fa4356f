"""Named extension points (importance scores, export formats, CLI commands): one registry each.

A registry maps a name to a function with a one-line help and optional settings, in the order
they were registered. Registries import nothing heavy, so the CLI builds its choices and help
from them without loading torch; the functions import what they need when called.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from slimify.errors import SlimifyError

__all__ = ["Registry", "Entry"]


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Callable[..., Any]
    help: str
    options: dict[str, Any] = field(default_factory=dict)


class Registry:
    """Entries of one kind (``"importance score"``), looked up by name; ``key`` normalises names
    (export formats: lower-case file suffixes)."""

    def __init__(self, kind: str, key: Callable[[str], str] = str) -> None:
        self.kind = kind
        self._key = key
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, help: str = "", **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@SCORES.register("l1", help="…")`` adds the function under ``name``."""
        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            name_ = self._key(name)
            self._entries[name_] = Entry(name_, fn, help or (fn.__doc__ or "").strip().split("\n")[0], options)
            return fn
        return add

    def unregister(self, name: str) -> None:
        self._entries.pop(self._key(name), None)

    def get(self, name: str) -> Entry:
        entry = self._entries.get(self._key(name)) if isinstance(name, str) else None
        if entry is None:
            raise SlimifyError(f"unknown {self.kind} {name!r}: use one of {', '.join(self._entries)}")
        return entry

    def names(self, where: Callable[[Entry], bool] | None = None) -> tuple[str, ...]:
        return tuple(n for n, e in self._entries.items() if where is None or where(e))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))
