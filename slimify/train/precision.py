"""Numeric format of a training step: autocast dtype (float16 with a GradScaler, or bfloat16 with
none, on CUDA and on CPU alike) and the channels-last memory format, from a recipe."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from slimify.train.recipe import Recipe

__all__ = ["amp_dtype", "autocast", "grad_scaler", "to_channels_last"]


def amp_dtype(recipe: Recipe, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: full float32). ``amp_dtype`` decides; left unset, the older
    ``amp`` key means float16 on CUDA only."""
    if recipe.amp_dtype is None:
        return torch.float16 if recipe.amp and device.type == "cuda" else None
    return None if recipe.amp_dtype == "float32" else getattr(torch, recipe.amp_dtype)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling only for float16 (bfloat16 has float32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def to_channels_last(model: nn.Module) -> nn.Module:
    """NHWC weights (4-d tensors only; the rest is unaffected) for faster convolutions on GPUs."""
    return model.to(memory_format=torch.channels_last)
