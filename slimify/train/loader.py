"""Data loaders whose order and augmentation are a pure function of (seed, epoch, index), so a run
stopped mid-epoch resumes exactly and every process of a distributed run sees its own shard.
"""
from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["ResumableSampler", "SeededDataset", "train_loader", "eval_loader", "as_batches", "sample_seed",
           "usable_workers", "cpus_available", "is_loader"]

Batch = tuple[torch.Tensor, torch.Tensor]
AUTO_MAX_WORKERS = 8  # workers per process when a recipe leaves ``workers`` unset and CPUs allow


def cpus_available() -> int:
    """CPUs this process may run on (its affinity mask under a job scheduler), as DataLoader counts them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def usable_workers(requested: int | None) -> int:
    """DataLoader workers per process: ``requested`` (``None``: up to AUTO_MAX_WORKERS), capped at
    this process's share of the CPUs, so a recipe written for a big machine runs without
    oversubscribing (and without DataLoader's warning) on a small one."""
    local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = max(1, cpus_available() // local_world)
    return min(AUTO_MAX_WORKERS if requested is None else requested, share)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed of one sample's augmentation in one epoch (independent of process and workers)."""
    return (seed * 1_000_003 + epoch * 10_007 + index * 97 + 1) % (2**63 - 1)


class ResumableSampler(DistributedSampler):
    """:class:`DistributedSampler` that can skip the batches a resumed run already trained on and
    yields ``(index, sample_seed)`` keys for :class:`SeededDataset`."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 rank: int = 0, world: int = 1, shuffle: bool = True):
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.set_epoch(epoch)
        self.batch_size = batch_size
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())
        usable = len(indices) - len(indices) % self.batch_size
        for index in indices[self.start_batch * self.batch_size: usable]:
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return max(0, self.num_samples // self.batch_size - self.start_batch) * self.batch_size


class SeededDataset(Dataset):
    """Wraps a dataset so each sample's random augmentation uses its own seed (torch, numpy and
    python RNGs), restoring the global RNG states afterwards."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
        torch.default_generator.manual_seed(seed)  # CPU generator only: 1 µs instead of ~90
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(torch_state)
            random.setstate(py_state)
            np.random.set_state(np_state)


def train_loader(dataset: Dataset, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 rank: int = 0, world: int = 1, workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """One epoch of training batches (drop-last), skipping ``start_batch`` already-seen batches."""
    sampler = ResumableSampler(dataset, batch_size, seed, epoch, start_batch, rank, world)
    generator = torch.Generator().manual_seed(seed * 7919 + epoch)  # worker seeds, not the global RNG
    return DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=True, generator=generator,
                      persistent_workers=False)


def eval_loader(dataset: Dataset, batch_size: int, workers: int = 0, pin_memory: bool = False,
                shuffle_seed: int | None = None) -> DataLoader:
    """Batches in order (or shuffled by a fixed seed), every sample once, nothing dropped."""
    generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle_seed is not None, generator=generator,
                      num_workers=workers, pin_memory=pin_memory)


def is_loader(data: Any) -> bool:
    """A DataLoader, or a loader-like iterable with a length that is not a Dataset (timm's
    PrefetchLoader, which wraps one and normalises on the device): batches are the caller's."""
    if isinstance(data, DataLoader):
        return True
    return not isinstance(data, Dataset) and hasattr(data, "__iter__") and hasattr(data, "__len__")


def as_batches(data: Dataset | Iterable[Batch], batch_size: int = 64, workers: int = 0,
               pin_memory: bool = False, shuffle_seed: int | None = None) -> Iterable[Batch]:
    """Accept a Dataset (wrapped in a loader) or anything already yielding ``(images, labels)``."""
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return eval_loader(data, batch_size, workers, pin_memory, shuffle_seed)
    return data  # type: ignore[return-value]
