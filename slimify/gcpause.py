"""Python's cyclic garbage collector paused during conversion.

Tracing and analysis allocate tens of thousands of small containers (fx nodes, rule records);
with a large model already in memory each full collection that this triggers walks every live
object and costs 0.1–0.2 s, a random spike on a 0.1 s conversion. Nothing created here is
garbage until the conversion ends, so one collection afterwards (by the normal thresholds) is enough.
"""
from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["gc_paused"]

F = TypeVar("F", bound=Callable[..., Any])


def gc_paused(fn: F) -> F:
    """Run ``fn`` with the cyclic collector off (restored afterwards, also on errors)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper  # type: ignore[return-value]
