"""Accuracy per switch: top-1 / top-5 / loss for each width, as data and as a printable table."""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from slimify.errors import SlimifyError
from slimify.train.common import at_width, model_widths, resolve_device
from slimify.train.distributed import all_reduce_sum, dist_info
from slimify.train.loader import Batch, as_batches, usable_workers

__all__ = ["evaluate", "EvalResult", "SwitchMetrics"]


@dataclass(frozen=True)
class SwitchMetrics:
    """Validation metrics of one switch."""

    width: float | str  # the switch, a width in range or a configuration's name
    top1: float  # accuracy in percent
    top5: float  # top-5 accuracy in percent (top-k with k = min(5, classes))
    loss: float  # mean cross-entropy
    images: int  # images evaluated


@dataclass(frozen=True)
class EvalResult:
    """Metrics of every evaluated switch, widest first; ``str(result)`` is a table.

        >>> print(slimify.evaluate(model, digits("val")))
        width   top-1   top-5    loss  images
         1.00   97.22   99.72  0.1032     360
         ...
    """

    rows: list[SwitchMetrics] = field(default_factory=list)

    def __getitem__(self, width: float) -> SwitchMetrics:
        for row in self.rows:
            if abs(row.width - width) < 1e-9:
                return row
        raise KeyError(width)

    def top1(self) -> dict[float, float]:
        return {r.width: r.top1 for r in self.rows}

    def to_dict(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.rows]

    def to_json(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (atomically; what ``profile --accuracy`` reads)."""
        from slimify.store.atomic import atomic_path

        with atomic_path(path, overwrite=overwrite) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
        return Path(path)

    def table(self, markdown: bool = False) -> str:
        head = ("width", "top-1", "top-5", "loss", "images")
        cells = [(f"{r.width:.2f}" if isinstance(r.width, float) else str(r.width), f"{r.top1:.2f}", f"{r.top5:.2f}",
                  f"{r.loss:.4f}", str(r.images)) for r in self.rows]
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
            return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
        sizes = [max(7, *(len(row[i]) for row in cells)) for i in range(len(head))]  # a configuration's name
        return "\n".join(" ".join(f"{v:>{n}}" for v, n in zip(row, sizes)) for row in [head, *cells])

    def __str__(self) -> str:
        return self.table()


def _batch_totals(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """correct top-1, correct top-5, loss sum and count of one batch (float64, on the batch's device)."""
    logits = logits.float()
    topk = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
    hits = topk.eq(labels.unsqueeze(-1))
    return torch.stack([hits[:, 0].sum(), hits.any(-1).sum(), F.cross_entropy(logits, labels, reduction="sum"),
                        torch.tensor(labels.numel(), device=labels.device)]).double()


@torch.no_grad()
def _evaluate_all(model: nn.Module, widths: tuple[float, ...], batches: Iterable[Batch], device: torch.device,
                  max_batches: int | None) -> torch.Tensor:
    """One pass over the data, each batch run at every switch: (switches, 4) totals. Decoding and
    augmenting images costs far more than a forward pass, so it is done once, not once per switch."""
    totals = torch.zeros(len(widths), 4, dtype=torch.float64, device=device)
    for images, labels in itertools.islice(batches, max_batches):  # no batch read beyond max_batches
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        for j, w in enumerate(widths):
            with at_width(model, w):
                totals[j] += _batch_totals(model(images), labels)
    return totals


def evaluate(
    model: nn.Module,
    data: Dataset | Iterable[Batch],
    *,
    widths: tuple[float, ...] | list[float] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    workers: int | None = 0,
    pin_memory: bool | None = None,
) -> EvalResult:
    """Top-1, top-5 and loss of each switch (all by default, widest first) in eval mode.

    Every image is decoded once: one pass over the data, each batch run at every switch. A
    Dataset is loaded with ``workers`` DataLoader workers (None: as many as the CPUs allow) and
    pinned memory on CUDA (``pin_memory`` None). A plain model is evaluated as one width-1.0
    row. Under ``torchrun`` each process evaluates every world-th image of a Dataset (a loader
    you pass should hold that process's shard) and the counts are summed over processes.
    """
    info = dist_info()
    if info.enabled and isinstance(data, Dataset):
        data = Subset(data, range(info.rank, len(data), info.world))  # type: ignore[arg-type]
    param = next(model.parameters(), None)
    dev = resolve_device(device) if device is not None else (param.device if param is not None else
                                                            torch.device("cpu"))
    pin = dev.type == "cuda" if pin_memory is None else pin_memory
    chosen = model_widths(model, widths)
    was_training = model.training
    model.eval()
    try:
        batches = as_batches(data, batch_size, workers=usable_workers(workers), pin_memory=pin)
        totals = all_reduce_sum(_evaluate_all(model, chosen, batches, dev, max_batches))
    finally:
        model.train(was_training)
    rows = []
    for w, (c1, c5, loss, n) in zip(chosen, totals.tolist()):
        if n == 0:
            raise SlimifyError("evaluation data is empty")
        rows.append(SwitchMetrics(w, 100.0 * c1 / n, 100.0 * c5 / n, loss / n, int(n)))
    return EvalResult(rows)
