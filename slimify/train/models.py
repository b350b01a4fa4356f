"""Models by name (timm, torchvision, slimify's own) and the small digits CNN that the demo, the
tests and the accuracy benchmark train on 2 CPU cores in seconds."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimify.errors import SlimifyError

__all__ = ["DigitsNet", "make_divisible", "build_model", "load_weights"]


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding (the same the conversion plan uses): nearest multiple of
    ``divisor``, at least ``divisor``, never more than 10% below ``value``."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


class DigitsNet(nn.Sequential):
    """A VGG-style CNN for 3x32x32 inputs: five conv-BN-ReLU layers, global pooling, a linear head.

    ``width`` builds the plain model a slimmable one runs at that switch (channels rounded like
    the conversion plan), e.g. for individually trained baselines. About 7.6 MFLOPs at width 1.

        >>> DigitsNet()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, width: float = 1.0, channels: tuple[int, int, int] = (16, 32, 64),
                 divisor: int = 8):
        c1, c2, c3 = (min(c, make_divisible(c * width, divisor)) for c in channels)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        super().__init__(
            *block(3, c1), *block(c1, c1), nn.MaxPool2d(2),  # 32 -> 16
            *block(c1, c2), *block(c2, c2), nn.MaxPool2d(2),  # 16 -> 8
            *block(c2, c3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c3, num_classes),
        )


def build_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """A freshly initialised plain model: ``resnet18`` / ``timm:resnet18`` (timm, no download),
    ``torchvision:resnet18`` or ``slimify:digitsnet``."""
    prefix, _, bare = name.rpartition(":")
    prefix = prefix or "timm"
    extra = dict(kwargs, **({"num_classes": num_classes} if num_classes is not None else {}))
    try:
        if prefix == "timm":
            import timm

            return timm.create_model(bare, pretrained=False, **extra)
        if prefix == "torchvision":
            import torchvision

            return torchvision.models.get_model(bare, weights=None, **extra)
        if prefix == "slimify" and bare.lower() == "digitsnet":
            return DigitsNet(**extra)
    except (RuntimeError, ValueError, KeyError) as e:
        raise SlimifyError(f"cannot build model {name!r}: {e}") from None
    raise SlimifyError(f"unknown model {name!r}: use a timm name, 'torchvision:NAME' or 'slimify:digitsnet'")


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load a plain state dict from ``.safetensors`` or a torch file (read with weights_only=True;
    a slimify training checkpoint's ``model`` entry also works)."""
    path = Path(path)
    if not path.is_file():
        raise SlimifyError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SlimifyError(f"{path}: cannot read weights safely: {e}") from e
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise SlimifyError(f"{path} does not fit {type(model).__name__}: {str(e).splitlines()[0]}") from None
    return model
