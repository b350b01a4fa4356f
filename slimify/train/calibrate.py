"""Re-estimate every switch's BatchNorm statistics after training (US-Nets, Yu & Huang 2019):
running averages accumulated while all switches trained are a poor fit for each one alone."""
from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import Dataset, Subset

import slimify
from slimify.errors import SlimifyError
from slimify.rewrite.config_slots import calibration_slot, config_slot
from slimify.selection.config_proof import prove_config
from slimify.train.common import at_width, model_widths, resolve_device
from slimify.train.distributed import all_reduce_sum, dist_info
from slimify.train.loader import Batch, as_batches, usable_workers

__all__ = ["calibrate_bn", "batchnorms"]


def batchnorms(model: nn.Module) -> list[_BatchNorm]:
    """All BatchNorm modules that track running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def _calibrate_all(model: nn.Module, widths: tuple[float, ...], batches: Iterable[Batch], limit: int,
                   device: torch.device) -> int:
    """One pass over ``limit`` batches, each run at every switch in train mode, after resetting
    every chosen switch's private statistics; cumulative averages (momentum None) weigh all
    batches the same. Returns the batches seen."""
    norms = batchnorms(model)
    momenta = [m.momentum for m in norms]
    for w in widths:
        with at_width(model, w):
            for m in norms:
                m.reset_running_stats()  # the active switch's private statistics only
    for m in norms:
        m.momentum = None
    seen = 0
    try:
        for images, _ in itertools.islice(batches, limit):  # no batch read beyond the limit
            images = images.to(device, non_blocking=True)
            for w in widths:
                with at_width(model, w):
                    model(images)
            seen += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
    return seen


@torch.no_grad()
def _reduce_stats(model: nn.Module, widths: tuple[float, ...], seen: int) -> None:
    """Under torchrun: each process averaged its own shard's batches; the batch-weighted mean of
    those averages over processes is what one process would have computed from all batches."""
    info = dist_info()
    if not info.enabled:
        return
    total = float(all_reduce_sum(torch.tensor([float(seen)], device=_model_device(model))).item())
    if total == 0:
        return
    for w in widths:
        with at_width(model, w):
            for m in batchnorms(model):
                for name in ("running_mean", "running_var"):
                    stat = getattr(m, name)
                    stat.copy_(all_reduce_sum(stat.double() * seen) / total)
                m.num_batches_tracked.fill_(int(total))


def _shard(data: Dataset | Iterable[Batch], batches: int) -> tuple[Dataset | Iterable[Batch], int]:
    """This process's part: every world-th image of a Dataset and its share of the batches."""
    info = dist_info()
    if not info.enabled or not isinstance(data, Dataset):
        return data, batches
    share = batches // info.world + (1 if info.rank < batches % info.world else 0)
    return Subset(data, range(info.rank, len(data), info.world)), share  # type: ignore[arg-type]


def calibrate_bn(
    model: nn.Module,
    data: Dataset | Iterable[Batch],
    batches: int = 100,
    *,
    widths: tuple[float, ...] | list[float] | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int = 0,
    workers: int | None = 0,
) -> nn.Module:
    """Reset and re-estimate the BatchNorm running statistics of each switch on ``batches``
    training batches (train mode, no gradients); returns ``model`` (changed in place).

    ``data`` is a Dataset (shuffled with ``seed``, loaded with ``workers``; None: as many as the
    CPUs allow) or anything yielding ``(images, labels)``. Each batch is decoded once and run at
    every switch. Under ``torchrun`` the processes share the batches of a Dataset and the
    statistics are reduced. Only BatchNorm buffers change: weights, and switches not in
    ``widths``, stay as they are. ``widths`` may name configurations that are not switches (any
    uniform width in range, a {group: channels} dict or a name): each gets statistics of its
    own, saved with the model.

        >>> slimify.calibrate_bn(model, slimify.train.digits("train"), batches=20)
    """
    if batches <= 0:
        raise SlimifyError(f"batches must be > 0, got {batches}")
    dev = resolve_device(device) if device is not None else _model_device(model)
    chosen = model_widths(model, widths)
    data, share = _shard(data, batches)
    was_training = model.training
    model.train()
    try:
        if widths is not None and slimify.is_slimmable(model):  # a configuration gets statistics of its own
            for w in chosen:
                if config_slot(model, w) >= len(slimify.switches(model)):
                    prove_config(model, w)  # to be named and saved: proven first, like add_config's
                calibration_slot(model, w)
        loader = as_batches(data, batch_size, workers=usable_workers(workers), pin_memory=dev.type == "cuda",
                            shuffle_seed=seed)
        seen = _calibrate_all(model, chosen, loader, share, dev)
        _reduce_stats(model, chosen, seen)
    finally:
        model.train(was_training)
    return model


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
