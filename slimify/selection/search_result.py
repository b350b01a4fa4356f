"""What a search is asked and what it gives back: a budget (FLOPs, parameters or latency; absolute
or relative to full width), the points of its path, and the result's table and plot."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from slimify.errors import SlimifyError

__all__ = ["KINDS", "Budget", "parse_budget", "Point", "SearchResult"]

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
    from slimify.selection.budget import parse_amount

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

        from slimify.store.atomic import atomic_path

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
