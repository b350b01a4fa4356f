"""Stochastic depth for fine-tuning: rescale the drop probabilities of a timm model's ``DropPath``
modules so that the deepest block drops with the recipe's ``drop_path`` rate (timm's linear rule
keeps the shallower blocks' proportions)."""
from __future__ import annotations

import torch.nn as nn

from slimify.errors import SlimifyError

__all__ = ["set_drop_path", "drop_path_modules"]


def drop_path_modules(model: nn.Module) -> list[nn.Module]:
    from timm.layers import DropPath

    return [m for m in model.modules() if isinstance(m, DropPath)]


def set_drop_path(model: nn.Module, rate: float) -> None:
    """Set the deepest ``DropPath`` to ``rate``, the others in proportion (0 turns it off)."""
    modules = drop_path_modules(model)
    if not modules:
        if rate == 0:
            return
        raise SlimifyError(f"drop_path {rate} needs a model with stochastic depth (timm's DropPath modules); "
                           f"{type(model).__name__} has none. Build it with drop_path_rate > 0 (the CLI does this "
                           "when converting a timm model name with such a recipe) or remove drop_path")
    top = max(m.drop_prob for m in modules)
    for i, m in enumerate(modules):
        m.drop_prob = rate * (m.drop_prob / top if top > 0 else (i + 1) / len(modules))
