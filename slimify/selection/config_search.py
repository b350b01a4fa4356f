"""Per-group widths under a budget: AutoSlim-style greedy slimming (Yu & Huang 2019) on a trained
slimmable model.

From full width, every move slims the one channel group whose slimming costs the least held-out
accuracy per unit of cost saved (far from the budget by a share of its channels, near it by
``steps`` grid steps: :mod:`slimify.selection.search_moves`); the path it walks is recorded and its
Pareto set kept. Costs are FLOPs or parameters (exact, per configuration) or
latency on this device, estimated from a per-layer table that times each layer shape once and
checked at the end against the real latency of the exported configuration.

    >>> result = search(model, batches, budget=Budget("flops", 0.3, relative=True))
    >>> result.chosen.channels, result.table()

Candidates are scored with BatchNorm normalising each held-out batch by its own statistics
(train-mode BN, running statistics restored afterwards): a configuration that is no switch has no
statistics of its own yet, and per-candidate calibration would cost a pass per candidate.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.selection.config_proof import add_config, eval_quiet
from slimify.selection.search_result import Budget, Point, SearchResult, parse_budget
from slimify.selection.search_walk import Scorer, Walk
from slimify.state import get_state
from slimify.state import width as at_width
from slimify.store.slimfile import example_input

__all__ = ["Budget", "parse_budget", "Point", "SearchResult", "search", "uniform_points"]


def _bn_batch_statistics(model: nn.Module) -> Callable[[], None]:
    """BatchNorm layers in train mode (batch statistics), the rest in eval mode; returns a function
    that restores modes and every BN buffer."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    was_training = model.training
    model.eval()
    for m in norms:
        m.train()

    def restore() -> None:
        model.load_state_dict(saved, strict=False)
        model.train(was_training)

    return restore


def _check_data(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    if not batches:
        raise SlimifyError("search needs held-out data: the data gave no batches")
    images, labels = batches[0]
    try:
        with torch.no_grad():
            out = model(images)
    except Exception as e:
        raise SlimifyError(f"search data does not fit the model: images of shape {list(images.shape)} failed "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise SlimifyError("search scores classifiers: the model must return (batch, classes) logits")
    top = max(int(b[1].max()) for b in batches)
    if top >= out.shape[-1]:
        raise SlimifyError(f"search data has label {top} but the model has {out.shape[-1]} outputs")


def uniform_points(model: nn.Module, scorer: Callable[[], tuple[float, float]], cost: Callable[[Any], float],
                   flops: Callable[[Any], float], widths: Iterable[float]) -> list[Point]:
    from slimify.rewrite.config_slots import channels_of

    out = []
    for w in widths:
        with at_width(model, w):
            top1, loss = scorer()
        out.append(Point(channels_of(model, w), cost(w), top1, loss, width=w, flops=flops(w)))
    return out


def search(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], budget: Budget,
           steps: int = 1, device: str | torch.device = "cpu", latency_runs: int = 10, fraction: float = 0.1,
           progress: Callable[[str], None] | None = None, name: str | None = None,
           cost_input: torch.Tensor | None = None) -> SearchResult:
    """Slim ``model`` greedily until ``budget`` is met; adds the found configuration under
    ``name`` (default :meth:`Budget.name`) and returns the path, its Pareto set and uniform widths
    scored the same way. Nothing is added when the budget cannot be met (SlimifyError).

    ``fraction``: far from the budget a move takes at least this share of a group's channels
    (AutoSlim's 10 %); once such a move would cross the budget, moves take ``steps`` grid steps
    (0: always ``steps``). ``batches`` are scored as given, so they may be smaller images than
    the deployed ones; ``cost_input``: the input FLOPs and latency are counted on (default: one
    example at the shape the model was converted with)."""
    from slimify.device import resolve_device

    state = get_state(model)
    if steps < 1 or not 0 <= fraction < 1:
        raise SlimifyError(f"steps must be >= 1 and fraction in [0, 1), got steps={steps}, fraction={fraction}")
    dev = resolve_device(device)
    home = next(model.parameters()).device
    model.to(dev)
    held = [(x.to(dev), y.to(dev)) for x, y in batches]
    x1 = (example_input(model) if cost_input is None else cost_input).to(dev)
    start = time.perf_counter()
    restore = _bn_batch_statistics(model)
    try:
        _check_data(model, held)
        _check_cost_input(model, x1)
        walk = Walk(model, Scorer(model, held), budget, x1, latency_runs, steps, progress)
        result = walk.run(fraction)
        result.device = str(dev)
        low = min(state.switches)
        result.uniform = uniform_points(model, walk.scorer, walk.cost, walk.flops,
                                        [round(w, 2) for w in _frange(low, 1.0, 0.05)])
    finally:
        restore()
        model.to(home)
        for slot in state.slots:  # scoring read borrowed statistics quietly: users still get told once
            slot.warned = False
    result.name = name or budget.name()
    add_config(model, result.name, result.chosen.channels, replace=True)
    result.seconds = time.perf_counter() - start
    return result


def _check_cost_input(model: nn.Module, x: torch.Tensor) -> None:
    try:
        with eval_quiet(model), torch.no_grad():
            model(x)
    except Exception as e:
        raise SlimifyError(f"the model does not run on the cost input of shape {list(x.shape)} "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _frange(low: float, high: float, step: float) -> list[float]:
    n = int(math.floor((high - low) / step + 1e-9))
    return sorted({low, *(high - k * step for k in range(n + 1))})
