"""Users' own model classes in ``.slim`` files: ``save`` says at once when ``load`` could not
rebuild the model by itself, and ``load(path, model=MyNet(...))`` takes a fresh instance the
user built, checked against the file (class, every tensor's name and shape, then the plan).

    >>> slimify.save(model, "mine.slim")            # SlimifyWarning: slimify.load cannot rebuild MyNet …
    >>> model = slimify.load("mine.slim", model=MyNet(width=16))
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimify.errors import SlimifyError, SlimifyWarning
from slimify.state import is_slimmable
from slimify.store.sources import SOURCE_ATTR, ModelSource, build, check_state_dict, source_of, state_signature

__all__ = ["source_for_save", "adopt"]


def _class(model: nn.Module) -> type:
    return getattr(type(model), "__slimify_base__", type(model))


def _own_spec(model: nn.Module) -> ModelSource:
    cls = _class(model)
    return ModelSource(f"{cls.__module__}:{cls.__qualname__}")


def source_for_save(model: nn.Module, source: ModelSource | None, path: str | Path) -> ModelSource:
    """The source to record for ``model``; warns (:class:`SlimifyWarning`) when ``load`` could not
    rebuild the model from it — an untrusted package, a local class, other constructor arguments —
    and says how to load the file anyway."""
    note = None
    if source is None:
        try:
            source = source_of(model)
        except SlimifyError:  # no known source: record the class; building it says why load cannot
            source = _own_spec(model)
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rebuilt = state_signature(build(source))
    except Exception as e:  # a user's constructor may raise anything
        note = str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        if rebuilt != state_signature(model):
            note = (f"{source.spec} with {source.kwargs or 'no arguments'} builds other tensors; record the "
                    f"arguments with slimify.store.sources.set_source(model, {source.spec!r}, **kwargs)")
    if note is not None:
        warnings.warn(f"saved {path}, but slimify.load cannot rebuild {_class(model).__name__} from it by itself "
                      f"({note}); load it with slimify.load(path, model={_class(model).__name__}(...))",
                      SlimifyWarning, stacklevel=3)
    return source


def adopt(model: Any, config: dict[str, Any], header: dict[str, Any], path: Path) -> nn.Module:
    """Check that the user's fresh ``model`` is the architecture the file holds (class name, every
    tensor's name and shape) and record the file's source on it; returns it."""
    if not isinstance(model, nn.Module):
        raise SlimifyError(f"load(model=...) takes a torch.nn.Module, got {type(model).__name__}")
    if is_slimmable(model):
        raise SlimifyError("load(model=...) takes a fresh, unconverted instance; this one is already slimmable")
    if type(model).__name__ != config.get("model"):
        raise SlimifyError(f"{path} holds a {config.get('model')}, not a {type(model).__name__}")
    saved = {k: torch.empty(v["shape"], device="meta") for k, v in header.items()
             if k != "__metadata__" and ".slim_bn." not in k}
    check_state_dict(saved, dict(model.state_dict()), f"the {type(model).__name__} passed to load")
    model.__dict__[SOURCE_ATTR] = ModelSource.from_dict(config["source"])
    return model
