"""Which device to run on: shared by training and profiling, so neither imports the other."""
from __future__ import annotations

import torch

from slimify.errors import SlimifyError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` picks the current CUDA device (``torchrun`` sets it per process) when present, else CPU."""
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise SlimifyError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SlimifyError(f"device {device!r}: CUDA is not available on this machine; use --device cpu")
    return dev
