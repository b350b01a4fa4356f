"""One greedy walk of the search (:func:`slimify.selection.config_search.search`): the costs of
configurations (cached), the candidate moves, scored on held-out batches, and the path."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimify.errors import SlimifyError
from slimify.rewrite.config_slots import analysis_of, config_slot, group_divisor_of, group_grid
from slimify.selection.config_proof import eval_quiet
from slimify.selection.latency_table import LatencyTable, real_latency
from slimify.selection.search_moves import candidate_counts, ranking, widened
from slimify.selection.search_result import Budget, Point, SearchResult
from slimify.state import get_state
from slimify.state import width as at_width

__all__ = ["Walk", "Scorer"]


class Scorer:
    """Held-out top-1 and loss of the active configuration, BN on batch statistics."""

    def __init__(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.model, self.batches = model, batches

    @torch.no_grad()
    def __call__(self) -> tuple[float, float]:
        correct = loss = count = 0.0
        for images, labels in self.batches:
            logits = self.model(images).float()
            correct += float((logits.argmax(-1) == labels).sum())
            loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            count += labels.numel()
        return 100.0 * correct / count, loss / count


class Walk:
    """One greedy walk: the costs of configurations (cached), the moves and the path."""

    def __init__(self, model: nn.Module, scorer: Scorer, budget: Budget, x1: torch.Tensor, latency_runs: int,
                 steps: int, progress: Callable[[str], None] | None) -> None:
        analysis = analysis_of(get_state(model))
        self.model, self.scorer, self.budget, self.x1, self.runs = model, scorer, budget, x1, latency_runs
        self.steps, self.progress = steps, progress
        self.groups = [g for g in analysis.table.groups if not g.fixed]
        self.groups_by_index = {g.index: g for g in self.groups}
        self.divisors = {g.index: group_divisor_of(analysis.plan, g) for g in self.groups}  # each group's own grid
        self.flops_cache: dict[Any, float] = {}
        self.table = LatencyTable(model, x1, latency_runs) if budget.kind == "latency" else None
        if self.table is not None:
            with eval_quiet(model), at_width(model, 1.0):
                self.table.scale = real_latency(model, 1.0, x1, latency_runs) / self.table.estimate()

    def flops(self, value: Any) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        key = tuple(sorted(value.items())) if isinstance(value, dict) else value
        if key not in self.flops_cache:
            with eval_quiet(self.model), at_width(self.model, value), FlopCounterMode(display=False) as counter, \
                    torch.no_grad():
                self.model(self.x1)
            self.flops_cache[key] = float(counter.get_total_flops())
        return self.flops_cache[key]

    def cost(self, value: Any) -> float:
        from slimify.deploy.extract import active_params

        if self.budget.kind == "flops":
            return self.flops(value)
        if self.budget.kind == "params":
            return float(active_params(self.model, value))
        with eval_quiet(self.model), at_width(self.model, value):
            return self.table.estimate()  # type: ignore[union-attr]

    def point(self, value: Any, **extra: Any) -> Point:
        with at_width(self.model, value):
            top1, loss = self.scorer()
        channels = value if isinstance(value, dict) else {g.index: g.size for g in self.groups}
        return Point(channels, self.cost(value), top1, loss, flops=self.flops(value), **extra)

    def move(self, current: Point, fraction: float, limit: float) -> Point | None:
        """The cheapest move in accuracy per unit of cost saved (:func:`ranking`). Measured latency
        is not monotone in channel counts: when no move saves any, the one saving FLOPs best.
        A coarse move (``fraction`` > 0) saves at least ``fraction`` of the distance to ``limit``."""
        scored = []
        for gi, channels in candidate_counts(self.groups, self.divisors, current.channels, self.steps,
                                             fraction).items():
            candidate = {**current.channels, gi: channels}
            try:
                config_slot(self.model, candidate)
                if fraction > 0:
                    candidate = self._widened(current, candidate, gi, fraction * (current.cost - limit))
            except SlimifyError:
                continue  # e.g. a chunk's pieces that must move together
            scored.append(self.point(candidate))
        saving = [p for p in scored if p.cost < current.cost]
        if not saving:
            return min(scored, key=lambda p: ranking(current, p, by_flops=True), default=None)
        return min(saving, key=lambda p: ranking(current, p))

    def _widened(self, current: Point, candidate: dict[int, int], gi: int, min_saving: float) -> dict[int, int]:
        count = widened(group_grid(self.groups_by_index[gi], self.divisors[gi]), current.channels[gi], candidate[gi],
                        current.cost - self.cost(candidate), min_saving)
        if count == candidate[gi]:
            return candidate
        wider = {**candidate, gi: count}
        try:
            config_slot(self.model, wider)
        except SlimifyError:
            return candidate
        return wider

    def _floor(self) -> float | None:
        """The cost of every group at its smallest count; None when that cannot be served (the
        equal pieces of a chunk, tied to other groups): then a walk that gets stuck says so."""
        cheapest = {g.index: group_grid(g, self.divisors[g.index])[0] for g in self.groups}
        try:
            config_slot(self.model, cheapest)
        except SlimifyError:
            return None
        return self.cost(cheapest)

    def run(self, fraction: float) -> SearchResult:
        budget, started = self.budget, time.perf_counter()
        full = self.point(1.0, width=1.0)
        limit = budget.value * full.cost if budget.relative else budget.value
        floor = self._floor()
        if floor is not None and floor > limit:
            raise SlimifyError(f"no configuration meets the budget: even every group at its smallest count costs "
                               f"{floor:.4g} > {limit:.4g} ({budget.kind}"
                               f"{', relative to full width' if budget.relative else ''})")
        result = SearchResult(budget, limit, full)
        current: Point | None = full
        fine = fraction == 0
        while current is not None and current.cost > limit:
            nxt = self.move(current, 0.0 if fine else fraction, limit)
            if not fine and nxt is not None and nxt.cost <= limit:
                fine = True  # a coarse move would cross the budget: land on it in fine steps
                nxt = self.move(current, 0.0, limit)
            current = self._accept(result, nxt, started)
        if current is None:
            last = result.path[-1].cost if result.path else full.cost
            raise SlimifyError(f"no configuration meets the budget {limit:.4g}: the search slimmed every group it "
                               f"could move alone down to {last:.4g}")
        if self.table is not None:  # the table is an estimate: slim on while the real latency misses the budget
            with eval_quiet(self.model):
                result.measured_ms = real_latency(self.model, current.channels, self.x1, self.runs)
            while result.measured_ms > limit and (nxt := self.move(current, 0.0, limit)) is not None:
                current = self._accept(result, nxt, started)
                with eval_quiet(self.model):
                    result.measured_ms = real_latency(self.model, current.channels, self.x1, self.runs)
            if result.measured_ms > limit:
                raise SlimifyError(f"no configuration meets {limit:g} ms on {self.x1.device}: the narrowest reached "
                                   f"measures {result.measured_ms:.3f} ms")
        result.chosen = current
        return result

    def _accept(self, result: SearchResult, point: Point | None, started: float) -> Point | None:
        if point is not None:
            result.path.append(point)
            if self.progress is not None:
                self.progress(f"move {len(result.path)}: cost {point.cost:.4g} (limit {result.limit:.4g}), "
                              f"top-1 {point.top1:.2f}, {time.perf_counter() - started:.0f} s")
        return point
