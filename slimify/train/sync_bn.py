"""SyncBatchNorm for slimmable models: each switch keeps its own (private) BatchNorm statistics,
computed over the global batch of all processes.

torch's (and timm's) ``convert_sync_batchnorm`` builds a new module from the tensors a BatchNorm
*serves* at the active switch and drops the class that serves each switch's private tensors:
the narrow switches then meet full-width statistics ("running_mean should contain 8 elements not
16") and their private statistics are never read again. Here every BatchNorm keeps its identity,
tensors, private holders and hooks; only its class changes, to a subclass that synchronises in
training mode and that slimify serves exactly as before. torch's ``nn.SyncBatchNorm`` kernel
runs on GPUs; on CPU (gloo) the statistics are all-reduced by differentiable collectives, so a
CPU run (and this project's tests) synchronises too.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from slimify.errors import SlimifyError
from slimify.rewrite.serve import make_slimmable, restore_class, slim_data

__all__ = ["convert_sync_batchnorm", "revert_sync_batchnorm", "sync_for_run", "check_no_foreign_sync", "is_synced",
           "AFTER_NORM"]

UNSYNCED = "__slimify_unsynced__"  # class attribute of a synchronised class: the class it replaced
_SYNC_CLASSES: dict[type, type] = {}  # BatchNorm class → its synchronised subclass (built once)
_KERNEL_DEVICES = ("cuda", "hpu", "xpu")  # where torch's SyncBatchNorm kernel runs (and privateuse1)


def _timm_after_norm() -> dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]]:
    try:
        from timm.layers.norm_act import BatchNormAct2d
    except ImportError:  # timm is optional here
        return {}
    return {BatchNormAct2d: lambda m, y: m.act(m.drop(y))}  # timm's SyncBatchNormAct does the same


# BatchNorm classes with a forward of their own → what that forward does after normalising (the
# synchronised forward normalises, then calls this); classes that keep _BatchNorm.forward need none
AFTER_NORM: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = _timm_after_norm()


def _after_norm(cls: type) -> Callable[[nn.Module, torch.Tensor], torch.Tensor] | None:
    """The class that defines ``cls``'s forward decides: plain BatchNorm → identity, a known
    subclass → its table entry, an unknown one → None (it cannot be synchronised faithfully)."""
    owner = next(c for c in cls.__mro__ if "forward" in c.__dict__)
    if owner is _BatchNorm:
        return lambda m, y: y
    return AFTER_NORM.get(owner)


class _SyncForward:
    """Mixed in before a BatchNorm class: in training mode with several processes, normalise with
    the statistics of the global batch; otherwise the class's own forward runs unchanged."""

    process_group: Any = None
    _check_non_zero_input_channels = nn.SyncBatchNorm._check_non_zero_input_channels  # read by the kernel path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):  # eval: never synchronised
            return super().forward(x)  # type: ignore[misc]
        group = self.process_group or dist.group.WORLD
        if dist.get_world_size(group) <= 1:
            return super().forward(x)  # type: ignore[misc]
        if x.device.type in (*_KERNEL_DEVICES, torch._C._get_privateuse1_backend_name()):
            y = nn.SyncBatchNorm.forward(self, x)  # type: ignore[arg-type]
        else:
            y = _all_reduced_batch_norm(self, x, group)  # type: ignore[arg-type]
        return self._after_norm(y)  # type: ignore[attr-defined]


def _all_reduced_batch_norm(bn: _BatchNorm, x: torch.Tensor, group: Any) -> torch.Tensor:
    """Batch normalisation over the union of every process's batch, differentiable through the
    all-reduces (their backward sums the gradients, as torch's SyncBatchNorm does); the running
    statistics move toward the global batch's mean and unbiased variance."""
    from torch.distributed import _functional_collectives as funcol  # torch's successor of distributed.nn

    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    xf = x.float()
    local = torch.cat([xf.sum(dims), xf.new_tensor([xf.numel() / max(xf.shape[1], 1)])])
    total = funcol.all_reduce(local, "sum", group)
    count = total[-1]
    mean = total[:-1] / count
    centered = xf - mean.view(shape)
    var = funcol.all_reduce((centered * centered).sum(dims), "sum", group) / count  # two passes: no cancellation
    y = centered * torch.rsqrt(var + bn.eps).view(shape)
    if bn.weight is not None:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    if bn.track_running_stats and bn.running_mean is not None:  # tensors only: no host sync, no graph break
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            f = 1.0 / bn.num_batches_tracked.float() if bn.momentum is None else bn.momentum
            unbiased = var * count / (count - 1).clamp(min=1)
            bn.running_mean.mul_(1 - f).add_((mean * f).to(bn.running_mean.dtype))
            bn.running_var.mul_(1 - f).add_((unbiased * f).to(bn.running_var.dtype))
    return y.to(x.dtype)


def _sync_class(base: type, path: str) -> type:
    cls = _SYNC_CLASSES.get(base)
    if cls is None:
        after = _after_norm(base)
        if after is None:
            known = ", ".join(sorted(c.__name__ for c in AFTER_NORM)) or "none"
            raise SlimifyError(f"sync_bn: {path or 'the model'} is a {base.__qualname__} with a forward of its own; "
                               f"slimify knows how to synchronise torch's BatchNorms and {known} (add its class "
                               "to slimify.train.sync_bn.AFTER_NORM), or set sync_bn: false")
        namespace = {UNSYNCED: base, "_after_norm": lambda self, y: after(self, y), "__module__": base.__module__,
                     "__qualname__": f"Sync{base.__qualname__}"}
        cls = _SYNC_CLASSES[base] = type(f"Sync{base.__name__}", (_SyncForward, base), namespace)
    return cls


def is_synced(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm that :func:`convert_sync_batchnorm` synchronises."""
    return getattr(type(module), UNSYNCED, None) is not None


def _served_class(module: nn.Module) -> type:
    """The class behind slimify's serving subclass (the module's own class when not slimmable)."""
    return type(module).__dict__.get("__slimify_base__", type(module))


def _swap_class(module: nn.Module, cls: type) -> None:
    data = slim_data(module)
    if data is not None:
        restore_class(module, data)
    module.__class__ = cls
    if data is not None:  # the same tensors and private BatchNorms, served by a subclass of the new class
        make_slimmable(module, data)


def convert_sync_batchnorm(model: nn.Module, process_group: Any = None) -> nn.Module:
    """Make every BatchNorm of ``model`` (slimmable or not) synchronise across processes, in
    place; state-dict keys, private per-switch statistics and ``isinstance`` checks are kept.

    Without a process group (one process) the converted layers compute local statistics, like
    ``nn.SyncBatchNorm``; :func:`~slimify.finetune` with ``sync_bn: true`` and one process converts
    nothing and warns instead. Undo with :func:`revert_sync_batchnorm` (before BN calibration,
    export or saving a whole model object)."""
    check_no_foreign_sync(model)
    targets = [(path, m) for path, m in model.named_modules()
               if isinstance(m, _BatchNorm) and not is_synced(m) and not isinstance(m, nn.SyncBatchNorm)]
    classes = [_sync_class(_served_class(m), path) for path, m in targets]  # every error before any change
    for (_, m), cls in zip(targets, classes):
        _swap_class(m, cls)
        m.process_group = process_group
    return model


def revert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Undo :func:`convert_sync_batchnorm` in place (a no-op on a model it did not convert)."""
    for m in model.modules():
        base = getattr(type(m), UNSYNCED, None)
        if base is not None:
            _swap_class(m, base)
            m.__dict__.pop("process_group", None)
    return model


def sync_for_run(model: nn.Module, wanted: bool, processes: int) -> bool:
    """The recipe's ``sync_bn`` for a run of ``processes`` processes: convert (True) when there are
    several; with one there is nothing to synchronise, so BatchNorm stays as it is and a warning
    says so (a recipe written for 8 GPUs still runs on a laptop)."""
    check_no_foreign_sync(model)
    if not wanted:
        return False
    if processes <= 1:
        warnings.warn("sync_bn: a single process has nothing to synchronise: BatchNorm statistics stay local "
                      "(they are the global batch's already)", stacklevel=3)
        return False
    convert_sync_batchnorm(model)
    return True


def check_no_foreign_sync(model: nn.Module) -> None:
    """Refuse a model whose slimmable BatchNorms were replaced by torch's or timm's
    ``convert_sync_batchnorm``: its narrow switches would run on full-width statistics."""
    for path, m in model.named_modules():
        if isinstance(m, _BatchNorm) and "slim_bn" in m._modules and slim_data(m) is None:
            raise SlimifyError(f"{path}: this BatchNorm was replaced after slimify.convert (torch's or timm's "
                               "convert_sync_batchnorm?): its switches' private statistics are no longer served "
                               "and narrow switches fail. Convert the original model and set sync_bn: true "
                               "(or call slimify.train.sync_bn.convert_sync_batchnorm) instead")
