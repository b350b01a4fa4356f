"""Plain weights written to a file (a model's state dict, no slimify config): what ``slimify
reorder`` hands to ``slimify convert --checkpoint``. ``.safetensors`` by suffix, else ``torch.save``. Imports no torch until it writes: the CLI reads
the suffixes for its help."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from slimify.store.atomic import atomic_path

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ["write_weights", "WEIGHT_SUFFIXES"]

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pt", ".pth")  # the suffixes write_weights understands


def write_weights(model: nn.Module, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``model``'s state dict to ``path`` atomically (safetensors for ``.safetensors``, else
    ``torch.save``); tensors sharing storage are copied apart, which safetensors requires."""
    import torch
    from safetensors.torch import save_file

    out = Path(path)
    state, seen = {}, set()
    for name, value in model.state_dict().items():
        t = value.detach().cpu().contiguous()
        if t.numel() and t.data_ptr() in seen:  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.data_ptr())
        state[name] = t
    with atomic_path(out, overwrite=overwrite) as tmp:
        if out.suffix.lower() == ".safetensors":
            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
    return out
