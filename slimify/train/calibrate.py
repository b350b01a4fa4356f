"""Re-estimate every switch's BatchNorm statistics after training (US-Nets, Yu & Huang 2019):
running averages accumulated while all switches trained are a poor fit for each one alone."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Dataset

import slimify
from slimify.errors import SlimifyError
from slimify.rewrite.config_slots import calibration_slot
from slimify.train.common import at_width, model_widths, resolve_device
from slimify.train.loader import Batch, as_batches

__all__ = ["calibrate_bn", "batchnorms"]


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """All BatchNorm modules that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def _calibrate_one(model: nn.Module, batches: Iterable[Batch], limit: int, device: torch.device) -> int:
    norms = batchnorms(model)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()  # the active switch's private statistics only
        m.momentum = None  # cumulative moving average: every batch weighs the same
    seen = 0
    try:
        for images, _ in batches:
            if seen >= limit:
                break
            model(images.to(device, non_blocking=True))
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return seen


def calibrate_bn(
    model: nn.Module,
    data: Dataset | Iterable[Batch],
    batches: int = 100,
    *,
    widths: tuple[float, ...] | list[float] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> nn.Module:
    """Reset and re-estimate the BatchNorm running statistics of each switch on ``batches``
    training batches (train mode, no gradients); returns ``model`` (changed in place).

    ``data`` is a Dataset (shuffled with ``seed``) or anything yielding ``(images, labels)``.
    Only BatchNorm buffers change: weights, and switches not in ``widths``, stay as they are.
    ``widths`` may name configurations that are not switches (any uniform width in range, a
    {group: channels} dict or a name): each gets statistics of its own, saved with the model.

        >>> slimify.calibrate_bn(model, slimify.train.digits("train"), batches=20)
    """
    if batches <= 0:
        raise SlimifyError(f"batches must be > 0, got {batches}")
    dev = resolve_device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.train()
    try:
        for w in model_widths(model, widths):
            if widths is not None and slimify.is_slimmable(model):  # a configuration gets statistics of its own
                calibration_slot(model, w)
            with at_width(model, w):
                loader = as_batches(data, batch_size, shuffle_seed=seed)
                _calibrate_one(model, loader, batches, dev)
    finally:
        model.train(was_training)
    return model


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
