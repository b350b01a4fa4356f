"""``torch.compile`` for training all switches: the model that runs the steps is compiled, the
model whose state dicts are saved is not (checkpoints carry no ``_orig_mod.`` prefixes), and
dynamo's recompile limit is raised so that every switch in train and eval mode gets its own graph."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from slimify.errors import SlimifyError

__all__ = ["compile_model", "strip_wrapper_prefixes", "GRAPHS_PER_SWITCH", "WRAPPER_PREFIXES"]

GRAPHS_PER_SWITCH = 4  # train and eval mode, with and without gradients
WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile's and DistributedDataParallel's key prefixes


def strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict with the prefixes that compiled / DDP wrappers add removed (when every key has one)."""
    for prefix in WRAPPER_PREFIXES * 2:  # either order: DDP over a compiled model or the reverse
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def compile_model(model: nn.Module, setting: bool | str, switches: int = 8) -> Any:
    """``model`` itself (``setting`` False) or ``torch.compile(model, backend=...)`` (True: inductor)."""
    if setting is False:
        return model
    if not hasattr(torch, "compile"):
        raise SlimifyError(f"compile: this torch ({torch.__version__}) has no torch.compile: remove it from the recipe")
    backend = "inductor" if setting is True else str(setting)
    from torch import _dynamo

    known = _dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise SlimifyError(f"compile: unknown torch.compile backend {backend!r}; known: {', '.join(sorted(known))}")
    _dynamo.config.recompile_limit = max(_dynamo.config.recompile_limit, GRAPHS_PER_SWITCH * switches)
    return torch.compile(model, backend=backend)
