"""Per-group widths under a budget: AutoSlim-style greedy slimming (Yu & Huang 2019) on a trained
slimmable model.

From full width, every move slims the one channel group whose slimming costs the least held-out
accuracy per unit of cost saved (far from the budget by a share of its channels, near it by
``steps`` grid steps: :mod:`slimify.deploy.search_moves`); the path it walks is recorded and its
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

import contextlib
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimify.deploy.latency_table import LatencyTable, real_latency
from slimify.deploy.search_moves import candidate_counts, ranking, widened
from slimify.errors import SlimifyError
from slimify.deploy.config_proof import add_config
from slimify.rewrite.config_slots import _analysis, config_slot, group_divisor_of, group_grid
from slimify.state import get_state
from slimify.state import width as at_width
from slimify.store.slimfile import example_input

__all__ = ["Budget", "parse_budget", "Point", "SearchResult", "search", "uniform_points"]

KINDS = ("flops", "params", "latency")


@dataclass(frozen=True)
class Budget:
    """A cost limit: ``kind`` flops / params / latency (ms); ``relative``: a fraction of full width."""

    kind: str
    value: float
    relative: bool = False

    def name(self) -> str:
        """How the found configuration is named: ``search-flops-0.30x``, ``search-latency-5ms``."""
        if self.relative:
            return f"search-{self.kind}-{self.value:.2f}x"
        unit = "ms" if self.kind == "latency" else ""
        return f"search-{self.kind}-{_short(self.value)}{unit}"


def _short(value: float) -> str:
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def parse_budget(kind: str, text: str | float) -> Budget:
    """``("flops", "300M")``, ``("flops", "0.3x")``, ``("params", "2M")``, ``("latency", 5)``."""
    from slimify.deploy.budget import parse_amount

    if kind not in KINDS:
        raise SlimifyError(f"budget kind must be one of {', '.join(KINDS)}, got {kind!r}")
    raw = str(text).strip()
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*x", raw, re.IGNORECASE)
    if match:
        value = float(match.group(1))
        if not 0 < value < 1:
            raise SlimifyError(f"a relative budget must lie in (0, 1) of the full width's cost, got {raw}")
        return Budget(kind, value, relative=True)
    return Budget(kind, parse_amount(raw))


@dataclass
class Point:
    """One configuration on the search path (or a uniform width): its cost and held-out score."""

    channels: dict[int, int]  # slimmable group → channels kept
    cost: float  # in the budget's unit (FLOPs, parameters, ms)
    top1: float  # held-out top-1 (%)
    loss: float  # held-out cross-entropy
    width: float | None = None  # the uniform width, for uniform points
    flops: float = 0.0


@dataclass
class SearchResult:
    budget: Budget
    limit: float  # the budget in absolute units
    full: Point
    path: list[Point] = field(default_factory=list)  # every accepted move, widest first
    chosen: Point | None = None
    uniform: list[Point] = field(default_factory=list)  # uniform widths scored the same way
    name: str = ""
    seconds: float = 0.0
    measured_ms: float | None = None  # real latency of the chosen configuration (latency budgets)
    device: str = "cpu"

    @property
    def pareto(self) -> list[Point]:
        """Path points no other path point beats in both cost and accuracy."""
        pts = sorted(self.path, key=lambda p: (p.cost, -p.top1))
        front, best = [], -math.inf
        for p in pts:
            if p.top1 > best:
                front.append(p)
                best = p.top1
        return front

    def table(self) -> str:
        unit = {"flops": "MFLOPs", "params": "params", "latency": "ms"}[self.budget.kind]
        scale = 1e6 if self.budget.kind == "flops" else 1.0
        wide = max(16, len(self.name))
        lines = [f"search {self.name}: budget {self.limit / scale:.4g} {unit}; {len(self.path)} moves in "
                 f"{self.seconds:.1f} s; held-out top-1 with batch-statistics BN", "",
                 f"{'configuration':>{wide}} | {unit:>10} | {'top-1':>6} | {'loss':>7}"]
        rows = [("full", self.full)] + [(f"uniform {p.width:g}", p) for p in self.uniform] + \
            [("pareto", p) for p in self.pareto if p is not self.chosen]
        if self.chosen is not None:
            rows.append((self.name, self.chosen))
        for label, p in sorted(rows, key=lambda r: -r[1].cost):
            lines.append(f"{label:>{wide}} | {p.cost / scale:>10.4g} | {p.top1:>6.2f} | {p.loss:>7.4f}")
        if self.measured_ms is not None and self.chosen is not None:
            off = 100 * (self.chosen.cost - self.measured_ms) / self.measured_ms
            lines += ["", f"latency of {self.name} measured on {self.device}: {self.measured_ms:.3f} ms "
                          f"(table estimate {self.chosen.cost:.3f} ms, {off:+.1f}%)"]
        if self.chosen is not None:
            lines += ["", f"{self.name} channels: " + ", ".join(f"{g}:{c}" for g, c in sorted(self.chosen.channels.items()))]
        return "\n".join(lines)

    def plot(self, path: Any) -> None:
        """Held-out top-1 against cost: uniform widths vs the searched path (PNG)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from slimify.store.slimfile import atomic_path

        scale = 1e6 if self.budget.kind == "flops" else 1.0
        fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
        u = sorted(self.uniform, key=lambda p: p.cost)
        ax.plot([p.cost / scale for p in u], [p.top1 for p in u], "o-", label="uniform width", color="tab:gray")
        walk = [self.full, *self.path]
        ax.plot([p.cost / scale for p in walk], [p.top1 for p in walk], ".-", label="searched path",
                color="tab:blue", alpha=0.7)
        if self.chosen is not None:
            ax.plot([self.chosen.cost / scale], [self.chosen.top1], "*", ms=12, color="tab:red", label=self.name)
        ax.axvline(self.limit / scale, color="tab:red", ls="--", lw=0.8)
        ax.set_xlabel({"flops": "MFLOPs", "params": "parameters", "latency": f"ms ({self.device}, table)"}[self.budget.kind])
        ax.set_ylabel("held-out top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path, overwrite=True) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)


class _Scorer:
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


@contextlib.contextmanager
def _eval_quiet(model: nn.Module) -> Iterator[None]:
    """Eval mode (costs are measured as deployed) without the borrowed-statistics warnings."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for m, mode in modes:
            m.training = mode


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
        walk = _Walk(model, _Scorer(model, held), budget, x1, latency_runs, steps, progress)
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
        with _eval_quiet(model), torch.no_grad():
            model(x)
    except Exception as e:
        raise SlimifyError(f"the model does not run on the cost input of shape {list(x.shape)} "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


class _Walk:
    """One greedy walk: the costs of configurations (cached), the moves and the path."""

    def __init__(self, model: nn.Module, scorer: _Scorer, budget: Budget, x1: torch.Tensor, latency_runs: int,
                 steps: int, progress: Callable[[str], None] | None) -> None:
        analysis = _analysis(get_state(model))
        self.model, self.scorer, self.budget, self.x1, self.runs = model, scorer, budget, x1, latency_runs
        self.steps, self.progress = steps, progress
        self.groups = [g for g in analysis.table.groups if not g.fixed]
        self.groups_by_index = {g.index: g for g in self.groups}
        self.divisors = {g.index: group_divisor_of(analysis.plan, g) for g in self.groups}  # each group's own grid
        self.flops_cache: dict[Any, float] = {}
        self.table = LatencyTable(model, x1, latency_runs) if budget.kind == "latency" else None
        if self.table is not None:
            with _eval_quiet(model), at_width(model, 1.0):
                self.table.scale = real_latency(model, 1.0, x1, latency_runs) / self.table.estimate()

    def flops(self, value: Any) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        key = tuple(sorted(value.items())) if isinstance(value, dict) else value
        if key not in self.flops_cache:
            with _eval_quiet(self.model), at_width(self.model, value), FlopCounterMode(display=False) as counter, \
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
        with _eval_quiet(self.model), at_width(self.model, value):
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

    def run(self, fraction: float) -> SearchResult:
        budget, started = self.budget, time.perf_counter()
        full = self.point(1.0, width=1.0)
        limit = budget.value * full.cost if budget.relative else budget.value
        cheapest = {g.index: group_grid(g, self.divisors[g.index])[0] for g in self.groups}
        if self.cost(cheapest) > limit:
            raise SlimifyError(f"no configuration meets the budget: even every group at its smallest count costs "
                               f"{self.cost(cheapest):.4g} > {limit:.4g} ({budget.kind}"
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
            raise SlimifyError(f"search got stuck above the budget {limit:.4g}: no group can slim further")
        if self.table is not None:  # the table is an estimate: slim on while the real latency misses the budget
            with _eval_quiet(self.model):
                result.measured_ms = real_latency(self.model, current.channels, self.x1, self.runs)
            while result.measured_ms > limit and (nxt := self.move(current, 0.0, limit)) is not None:
                current = self._accept(result, nxt, started)
                with _eval_quiet(self.model):
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


def _frange(low: float, high: float, step: float) -> list[float]:
    n = int(math.floor((high - low) / step + 1e-9))
    return sorted({low, *(high - k * step for k in range(n + 1))})
