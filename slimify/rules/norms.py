"""p-norms (``torch.linalg.vector_norm``, ``torch.norm``, ``Tensor.norm``): reductions whose second
positional argument is the order p, not the dims (ConvNeXt-V2's global response norm takes the
L2 norm over the spatial dims, channel by channel)."""
from __future__ import annotations

from typing import Any

import torch

from slimify.rules.base import RuleContext
from slimify.rules.elementwise import reduction
from slimify.rules.registry import rule

__all__ = ["p_norm"]


@rule(torch.linalg.vector_norm, torch.linalg.norm, "norm")  # norm: torch.norm and Tensor.norm
def p_norm(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    """``(x, ord/p, dim, keepdim)``: the reduction rule over ``dim``; no dim reduces everything."""
    x = args[0] if args else kwargs["input"]
    dim = args[2] if len(args) > 2 else kwargs.get("dim")
    keepdim = args[3] if len(args) > 3 else kwargs.get("keepdim", False)
    if dim is None:  # a norm over every element is no channel at all
        return reduction(ctx, [x], {})
    return reduction(ctx, [x], {"dim": dim, "keepdim": bool(keepdim)})

