"""An input size asked of a converted model, checked against the one it was converted with
(``example_shape``, recorded in its state and ``.slim`` file) before any work: the channels must
match, the model must run at that size, and the size must not be smaller than the model's own
downsampling (its smallest 2-D convolution output, measured at the recorded size, would fall below
one pixel). A size under half the recorded one runs, with a warning.

    >>> check_input_size(model, (3, 16, 16))      # a 64-px model with 8x downsampling
    'input size 3x16x16 is under half the size the model was converted with (3x64x64): …'
    >>> check_input_size(model, (1, 64, 64))
    SlimifyError: input size 1x64x64 has 1 channel but the model takes 3 (converted with 3x64x64)
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.state import get_state
from slimify.store.slimfile import example_shape

__all__ = ["check_input_size", "format_size"]


def format_size(size: tuple[int, ...]) -> str:
    """``(3, 224, 224)`` → ``"3x224x224"``."""
    return "x".join(str(int(s)) for s in size)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _smallest_map(model: nn.Module, size: tuple[int, ...]) -> tuple[int, int] | None:
    """Run ``model`` once on a batch of one at ``size`` (eval mode, no gradients, its own device)
    and return the smallest height and width a 2-D convolution produced (None: no convolution).
    The model's modules are not touched: the hook is torch's global one, removed after."""
    seen: list[tuple[int, int]] = []

    def hook(module: nn.Module, args: object, output: object) -> None:
        if isinstance(module, nn.Conv2d) and isinstance(output, torch.Tensor) and output.dim() == 4:
            seen.append((int(output.shape[-2]), int(output.shape[-1])))

    param = next(iter(model.parameters()), None)
    x = torch.zeros(1, *size, device=param.device if param is not None else "cpu")
    training = {m: m.training for m in model.modules()}
    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        handle.remove()
        for m, mode in training.items():
            m.training = mode
    return (min(h for h, _ in seen), min(w for _, w in seen)) if seen else None


def check_input_size(model: nn.Module, size: tuple[int, int, int]) -> str | None:
    """Raise one SlimifyError when ``size`` (C, H, W) cannot be right for ``model`` (a converted
    image model): other channels than recorded, a size it cannot run at, or smaller than its
    downsampling. Returns a warning line for a size under half the recorded one, else None."""
    if get_state(model).record.example_inputs is not None:  # several or keyword inputs: no one image size
        return None
    recorded = example_shape(model)[1:]
    if len(recorded) != 3:
        raise SlimifyError(f"an input size CxHxW is for image models; this one takes inputs of shape "
                           f"{list(example_shape(model))}")
    asked, conv = tuple(int(s) for s in size), format_size(recorded)
    if asked[0] != recorded[0]:
        raise SlimifyError(f"input size {format_size(asked)} has {asked[0]} channel{'s' * (asked[0] != 1)} but the "
                           f"model takes {recorded[0]} (converted with {conv})")
    if asked == tuple(recorded):
        return None
    try:
        _smallest_map(model, asked)
    except Exception as e:  # noqa: BLE001 - the model's own size check, said in one line
        raise SlimifyError(f"the model cannot run on a {format_size(asked)} input ({type(e).__name__}: "
                           f"{_first_line(e)}); it was converted with {conv}") from None
    if asked[1] < recorded[1] or asked[2] < recorded[2]:
        smallest = _smallest_map(model, tuple(recorded))
        if smallest is not None:
            least = (math.ceil(recorded[1] / smallest[0]), math.ceil(recorded[2] / smallest[1]))
            if asked[1] < least[0] or asked[2] < least[1]:
                raise SlimifyError(f"input size {format_size(asked)} is smaller than the model's downsampling: its "
                                   f"smallest feature map is {smallest[0]}x{smallest[1]} at the {conv} it was "
                                   f"converted with; give at least {least[0]}x{least[1]}")
    if 2 * asked[1] < recorded[1] or 2 * asked[2] < recorded[2]:
        return (f"input size {format_size(asked)} is under half the size the model was converted with ({conv}): "
                "its accuracy and cost there say little about the recorded size")
    return None
