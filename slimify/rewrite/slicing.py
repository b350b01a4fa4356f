"""The one helper that cuts a full tensor down to the active channels of a switch."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["cut", "as_index"]


def as_index(index: slice | np.ndarray, device: torch.device) -> slice | torch.Tensor:
    if isinstance(index, slice):
        return index
    return torch.as_tensor(index, dtype=torch.long, device=device)


def cut(tensor: torch.Tensor, dims: dict[int, slice | np.ndarray]) -> torch.Tensor:
    """``tensor`` restricted to ``dims`` (dim → slice or index array); slices stay views, so
    gradients and in-place updates reach the full tensor."""
    for dim, index in dims.items():
        if isinstance(index, slice):
            tensor = tensor.narrow(dim, index.start, index.stop - index.start)
        else:
            tensor = tensor.index_select(dim, torch.as_tensor(index, dtype=torch.long, device=tensor.device))
    return tensor
