"""Multi-process training under ``torchrun``: process group setup (gloo on CPU, nccl on GPU),
DistributedDataParallel wrapping, and the helpers that let only rank 0 write files."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DistInfo", "dist_info", "init_from_env", "wrap_ddp", "all_reduce_sum", "barrier", "shutdown",
           "process_group"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0  # global rank of this process
    world: int = 1  # number of processes
    local_rank: int = 0  # rank on this machine (picks the GPU)

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def dist_info() -> DistInfo:
    """The current process group's ranks, or a single process when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_from_env(device: torch.device | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return dist_info()
    if not dist.is_initialized():
        cuda = (device.type == "cuda") if device is not None else torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return dist_info()


def wrap_ddp(model: nn.Module, device: torch.device, info: DistInfo, slimmable: bool) -> nn.Module:
    """DDP over ``model`` when there are several processes, else the model itself.

    A slimmable model's private BatchNorm parameters are used only by their own switch, so the
    one backward pass that synchronises (the last switch of a step; the others run under
    ``no_sync``) leaves some parameters out of its graph: ``find_unused_parameters`` lets DDP
    all-reduce the gradients they accumulated during the ``no_sync`` passes.
    """
    if not info.enabled:
        return model
    device_ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=slimmable)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (identity when single-process)."""
    if dist.is_available() and dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (after every process got here), if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group() -> Iterator[DistInfo]:
    """Join the process group ``torchrun`` describes for the block (one process: no-op) and leave it
    when the block ends; an error leaves without the closing barrier (the other processes fail
    on their own)."""
    info = init_from_env()
    yield info
    shutdown()
