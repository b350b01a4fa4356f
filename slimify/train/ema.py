"""An exponential moving average of the weights (timm's ``ModelEmaV3``) of a slimmable model: one
copy holds every switch, including each switch's private BatchNorm statistics, and is evaluated
at every switch beside the raw weights."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

__all__ = ["SwitchEma"]


class SwitchEma:
    """``ModelEmaV3`` of ``model`` (decay per optimizer update), checkpointable as a state dict."""

    def __init__(self, model: nn.Module, decay: float, device: torch.device | None = None):
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(model, decay=decay, device=device)

    @property
    def module(self) -> nn.Module:
        """The averaged model (a slimmable model like the one trained)."""
        return self.ema.module

    def update(self, model: nn.Module, step: int) -> None:
        self.ema.update(model, step=step)

    def state_dict(self) -> dict[str, Any]:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state)
