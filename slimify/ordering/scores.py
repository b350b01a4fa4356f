"""How much each channel class matters, so reordering can put the best channels first.

The scores ``reorder`` understands are registered in ``ordering/registry.py`` (by name, with
their help); this module computes them. A score is one number per channel *class* (the ids that are active together), indexed by the
class label (``GroupTable.class_of``). Every method reads only the analysis data and the
model's tensors; none changes the model.

- ``l1`` / ``l2``: norm of each output channel of every producing weight (a parameter with at
  least 2 dims whose dim 0 carries channel ids: conv, linear, F.linear weights), summed over the
  producers of the class.
- ``bn``: BatchNorm scale magnitude ``|gamma|`` (network slimming, Liu et al. 2017); a group
  that has no BatchNorm falls back to ``l1``.
- ``taylor``: first-order Taylor estimate of the loss change when a channel is removed
  (Molchanov et al. 2017), ``|sum over positions of activation * gradient|`` per sample and
  channel, summed over samples and batches, at the output of the group's BatchNorms (or, in a
  group without BatchNorm, of every module producing or normalising its channels: conv, linear,
  other norms). Per sample, not per batch: on a trained network the batch-mean gradient nearly
  vanishes and its sign cancels across samples.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimify.analysis.groups import GroupTable
from slimify.analysis.space import ChannelSpace
from slimify.analysis.unique import unique
from slimify.errors import SlimifyError

__all__ = ["norm_scores", "bn_scores", "taylor_scores", "tensor_of", "as_loader"]


def tensor_of(model: nn.Module, path: str, name: str) -> torch.Tensor | None:
    """The parameter or buffer ``name`` of the submodule at ``path`` (None if it is unset)."""
    module = model.get_submodule(path)
    if name in module._parameters:
        return module._parameters[name]
    return module._buffers.get(name)


def _producers(model: nn.Module, space: ChannelSpace) -> list[tuple[torch.Tensor, np.ndarray]]:
    """Weights whose dim 0 carries channel ids and that have a fan-in (>= 2 dims)."""
    found, seen = [], set()
    for (path, name), spec in space.params.items():
        t = tensor_of(model, path, name)
        if t is None or 0 not in spec.dims or t.dim() < 2 or id(t) in seen:
            continue
        seen.add(id(t))
        found.append((t, spec.dims[0]))
    return found


def norm_scores(model: nn.Module, space: ChannelSpace, table: GroupTable, p: int) -> np.ndarray:
    scores = np.zeros(len(table.class_of), np.float64)
    with torch.no_grad():
        for t, ids in _producers(model, space):
            norm = t.detach().float().flatten(1).norm(p=p, dim=1).cpu().numpy()
            np.add.at(scores, table.class_of[ids], norm)
    return scores


def bn_scores(model: nn.Module, space: ChannelSpace, table: GroupTable) -> np.ndarray:
    """|gamma| per class; groups without any BatchNorm get their ``l1`` scores instead."""
    scores = np.zeros(len(table.class_of), np.float64)
    has_bn = np.zeros(len(table.groups), bool)
    for spec in space.batchnorms:
        gamma = tensor_of(model, spec.module, "weight")
        if gamma is None:  # affine=False: no scale to read
            continue
        np.add.at(scores, table.class_of[spec.ids], gamma.detach().float().abs().cpu().numpy())
        groups = table.group_of_id[spec.ids]
        has_bn[unique(groups[groups >= 0])] = True
    if not has_bn.all():
        fallback = norm_scores(model, space, table, 1)
        for g in table.groups:
            if not has_bn[g.index]:
                scores[g.classes] = fallback[g.classes]
    return scores


def as_loader(data: Any, batch_size: int = 32) -> Iterable[Any]:
    """A Dataset becomes a loader; anything else is taken as an iterable of batches."""
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    return data


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        target = batch[1] if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
        return batch[0], target
    raise SlimifyError(f"taylor data must yield tensors or (inputs, targets) pairs, got {type(batch).__name__}")


def _logits(output: Any) -> torch.Tensor:
    while isinstance(output, (list, tuple)) and output:
        output = output[0]
    if isinstance(output, dict) and output:
        output = next(iter(output.values()))
    if not isinstance(output, torch.Tensor):
        raise SlimifyError(f"taylor scores need a model returning a tensor, got {type(output).__name__}")
    return output


def _loss(logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy against the labels, or against the model's own predictions without labels."""
    if logits.dim() < 2:
        return logits.float().pow(2).mean()
    if target is None or target.dtype not in (torch.int64, torch.int32) or target.shape[0] != logits.shape[0]:
        target = logits.detach().argmax(1)
    return F.cross_entropy(logits.float(), target.long().to(logits.device), reduction="sum")


def _channel_owners(space: ChannelSpace, table: GroupTable) -> dict[str, np.ndarray]:
    """Module path → ids of the output channels whose activations the Taylor score reads: the
    BatchNorms of groups that have one (a conv's pre-norm output at zero is not a removed
    channel: the norm would still add its shift), the modules owning a dim-0 parameter else."""
    owners: dict[str, np.ndarray] = {}
    normed = np.zeros(len(table.groups) + 1, bool)
    for bn in space.batchnorms:
        owners.setdefault(bn.module, np.asarray(bn.ids, np.int64))
        normed[table.group_of_id[bn.ids]] = True
    normed[-1] = False  # group -1: ids in no group
    for (path, _), spec in space.params.items():
        if 0 in spec.dims and path and not normed[table.group_of_id[spec.dims[0]]].any():
            owners.setdefault(path, np.asarray(spec.dims[0], np.int64))
    return owners


def _capture(model: nn.Module, owners: dict[str, np.ndarray], captured: list) -> list[Any]:
    """Forward hooks that keep each owner's output (and hand a copy on, so later in-place ops
    such as ``relu_`` or ``out += identity`` cannot change the kept activation)."""

    def hook_for(path: str, n: int) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> Any:
            if not isinstance(out, torch.Tensor) or out.dim() < 2 or not out.requires_grad:
                return None
            dim = out.dim() - 1 if isinstance(module, (nn.Linear, nn.LayerNorm)) else 1
            if out.shape[dim] != n:
                return None
            captured.append((path, dim, out))
            return out.clone()
        return hook

    return [model.get_submodule(path).register_forward_hook(hook_for(path, len(ids))) for path, ids in owners.items()]


def _per_sample(out: torch.Tensor, grad: torch.Tensor, dim: int) -> torch.Tensor:
    """|sum over positions of activation * gradient| per sample and channel, summed over samples."""
    prod = (out.detach() * grad).movedim(dim, 1)
    prod = prod.flatten(2).sum(2) if prod.dim() > 2 else prod
    return prod.abs().sum(0)


def taylor_scores(model: nn.Module, space: ChannelSpace, table: GroupTable, data: Any, batches: int) -> np.ndarray:
    if data is None:
        raise SlimifyError("taylor scores need data: pass a few batches (reorder_data=/data=, or --data)")
    owners = _channel_owners(space, table)
    scores = np.zeros(len(table.class_of), np.float64)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    captured: list[tuple[str, int, torch.Tensor]] = []
    handles = _capture(model, owners, captured)
    was_training, used = model.training, 0
    model.eval()  # running statistics must not change, and dropout stays off
    try:
        for batch in as_loader(data):
            if used >= batches:
                break
            x, y = _split_batch(batch)
            x = x.to(device)
            if x.is_floating_point():
                x = x.detach().requires_grad_(True)  # activations need a graph even for frozen weights
            captured.clear()
            loss = _loss(_logits(model(x)), y)
            grads = torch.autograd.grad(loss, [o for _, _, o in captured], allow_unused=True)
            for (path, dim, out), grad in zip(captured, grads):
                if grad is not None:
                    values = _per_sample(out, grad, dim).double().cpu().numpy()
                    np.add.at(scores, table.class_of[owners[path]], values)
            used += 1
    finally:
        for h in handles:
            h.remove()
        captured.clear()
        model.train(was_training)
    if used == 0:
        raise SlimifyError("taylor data yielded no batches: pass at least one batch")
    return scores
