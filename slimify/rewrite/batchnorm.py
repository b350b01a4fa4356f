"""Switchable BatchNorm storage: private statistics and affine parameters per switch.

The original ``weight``/``bias``/``running_*`` keys keep serving width 1.0, so a pretrained
checkpoint loads unchanged; every narrower switch owns a :class:`SwitchBatchNorm` under
``<bn>.slim_bn.<switch index>``, initialised from the pretrained values of its channels.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

__all__ = ["SwitchBatchNorm", "attach_private_batchnorm", "BN_TENSORS"]

BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


class SwitchBatchNorm(nn.Module):
    """Holds one switch's BatchNorm tensors (it is storage: its parent's forward uses them)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, index: np.ndarray) -> None:
        super().__init__()
        take: list[torch.Tensor] = []
        n = len(index)
        prefix = n > 0 and int(index[0]) == 0 and int(index[-1]) == n - 1 and bool((np.diff(index) == 1).all())

        def pick(full: torch.Tensor) -> torch.Tensor:  # meta (the self-check's copy): the size is all
            if full.is_meta:
                return torch.empty(n, dtype=full.dtype, device="meta")
            if prefix:  # the first channels (no reordering): a slice's copy, no gather
                return full[:n].clone()  # under no_grad: no detach needed
            if not take:
                take.append(torch.as_tensor(index, dtype=torch.long))
            return full[take[0].to(full.device)]  # a gather is a copy already

        # straight into the dicts: fixed names, and register_* costs a failed attribute lookup each
        with torch.no_grad():  # copies, never part of a graph (one context, not a detach per tensor)
            for name in ("weight", "bias"):
                full = bn._parameters.get(name)
                if full is not None:
                    self._parameters[name] = nn.Parameter(pick(full))
            for name in ("running_mean", "running_var"):
                full = bn._buffers.get(name)
                if full is not None:
                    self._buffers[name] = pick(full)
            count = bn._buffers.get("num_batches_tracked")
            if count is not None:
                self._buffers["num_batches_tracked"] = count.clone()

    def extra_repr(self) -> str:
        t = self._buffers.get("running_mean")
        return f"{0 if t is None else t.numel()}"


def attach_private_batchnorm(bn: nn.Module, per_switch: list[np.ndarray], switches: tuple[float, ...]) -> list[int | None]:
    """Add ``bn.slim_bn`` and return, per switch, the index into it (None: the original)."""
    slots: list[int | None] = []
    holders = nn.ModuleList()
    for w, index in zip(switches, per_switch):
        if w >= 1.0:
            slots.append(None)
        else:
            slots.append(len(holders))  # into the list's dict: ``append`` checks the name by a failed lookup
            holders._modules[str(len(holders))] = SwitchBatchNorm(bn, index)
    bn.slim_bn = holders
    bn.register_load_state_dict_pre_hook(_fill_missing_private(
        {i: per_switch[s] for s, i in enumerate(slots) if i is not None}))
    return slots


def _fill_missing_private(indices: dict[int, np.ndarray]) -> Any:
    """A checkpoint of the original model has no private keys: derive them from its BN."""

    def hook(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
        for slot, index in indices.items():
            for name in BN_TENSORS:
                key, source = f"{prefix}slim_bn.{slot}.{name}", prefix + name
                if key in state_dict or source not in state_dict:
                    continue
                full = state_dict[source]
                state_dict[key] = full.clone() if name == "num_batches_tracked" else full[torch.as_tensor(index, dtype=torch.long)]

    return hook
