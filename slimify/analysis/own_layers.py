"""A model's layers, weights and buffers are the same objects after analysis ran its forward code.

Forward code that assigns a new layer or weight to itself on every call (``self.proj =
nn.Linear(…)``) changes the model each time it runs: no plan holds for the next call. Analysis puts
the model's own ones back and refuses it with one error naming the attribute and the forward that
assigns it. Buffers forward code replaces (a cached table) are put back without an error."""
from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import torch.nn as nn

from slimify.analysis.containers import contents, refill, same_contents
from slimify.errors import SlimifyError

__all__ = ["layers_kept"]

_STORES = (("_modules", "layer"), ("_parameters", "weight"), ("_buffers", ""))  # "": put back silently
_NAMES = tuple(store for store, _ in _STORES)  # read from the module's __dict__: nn.Module keeps them there


@contextlib.contextmanager
def layers_kept(model: nn.Module) -> Iterator[None]:
    """Put back every module's submodules, parameters and buffers as they were (by identity); when
    the body finishes and forward code had replaced a layer or a weight, raise ``SlimifyError``."""
    before = {m: [contents(own[store]) for store in _NAMES] for m in model.modules() for own in (vars(m),)}
    replaced: list[tuple[nn.Module, str, str]] = []
    try:
        yield
    finally:
        for m, kept in before.items():
            own = vars(m)
            for (store, kind), items in zip(_STORES, kept):
                now = own[store]
                if same_contents(now, items):
                    continue
                old = dict(zip(items[: len(items) // 2], items[len(items) // 2:]))
                replaced += [(m, name, kind) for name, v in now.items() if kind and old.get(name) is not v]
                refill(now, items)
    if replaced:
        raise SlimifyError(_message(model, replaced))


def _message(model: nn.Module, replaced: list[tuple[nn.Module, str, str]]) -> str:
    paths = {m: p for p, m in model.named_modules()}
    owner, name, kind = replaced[0]
    path = f"{paths.get(owner) or type(model).__name__}.{name}" if paths.get(owner) else name
    try:
        where = f" ({inspect.getsourcefile(type(owner).forward)}, line {inspect.getsourcelines(type(owner).forward)[1]}, " \
                f"{type(owner).__name__}.forward)"
    except (OSError, TypeError):
        where = f" ({type(owner).__name__}.forward)"
    return (f"{type(model).__name__} replaces its own {kind} {path!r} when it runs{where}: the model changes on every "
            f"call, so no plan of its widths would hold. Create layers and weights in __init__ and only use them in "
            f"forward; the model is left as it was")
