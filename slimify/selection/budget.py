"""Choose what to deploy: the widest switch whose measured costs fit every budget given.

    >>> best = pick(slimify.profile(model), latency_ms=5, memory_mb=200)
    >>> best.width
    0.75
"""
from __future__ import annotations

import re

from slimify.deploy.measure import ProfileResult, SwitchProfile
from slimify.errors import SlimifyError

__all__ = ["pick", "parse_amount", "BUDGETS"]

# budget name → (SwitchProfile field, unit shown in messages)
BUDGETS: dict[str, tuple[str, str]] = {
    "latency_ms": ("latency_ms", "ms"),
    "flops": ("flops", "FLOPs"),
    "params": ("params", "parameters"),
    "memory_mb": ("memory_mb", "MB"),
}
_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_amount(text: str | float | int) -> float:
    """``"1.5G"`` → 1.5e9, ``"300k"`` → 3e5, ``"5e6"`` → 5e6 (suffixes k, M, G, T)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)\s*", str(text), re.IGNORECASE)
        if not match:
            raise SlimifyError(f"expected a positive number such as 300k, 5M or 1.5G, got {text!r}")
        value = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    if not value > 0:
        raise SlimifyError(f"a budget must be positive, got {text!r}")
    return value


def _describe(row: SwitchProfile) -> str:
    timed = f"{row.latency_ms:.2f} ms, " if row.latency_ms is not None else ""
    return (f"{row.config or f'width {row.width:g}'}: {timed}{row.flops / 1e9:.3f} GFLOPs, "
            f"{row.params:,} params, {row.memory_mb:.1f} MB")


def pick(result: ProfileResult, latency_ms: float | None = None, flops: float | None = None,
         params: float | None = None, memory_mb: float | None = None) -> SwitchProfile:
    """The largest profiled switch or named configuration (most FLOPs, then widest) within all
    given budgets (latency is the median)."""
    budgets = {name: value for name, value in
               dict(latency_ms=latency_ms, flops=flops, params=params, memory_mb=memory_mb).items() if value is not None}
    if not budgets:
        raise SlimifyError("give at least one budget: latency_ms, flops, params or memory_mb")
    for name, value in budgets.items():
        if not value > 0:
            raise SlimifyError(f"budget {name} must be positive, got {value}")
    if latency_ms is not None and any(r.latency_ms is None for r in result.rows):
        raise SlimifyError("a latency budget needs measured latency: profile with latency=True")
    fitting = [r for r in result.rows if all(getattr(r, BUDGETS[n][0]) <= v for n, v in budgets.items())]
    if not fitting:
        narrowest = min(result.rows, key=lambda r: r.width)
        over = [f"{n} {getattr(narrowest, BUDGETS[n][0]):.4g} > {v:.4g}" for n, v in budgets.items()
                if getattr(narrowest, BUDGETS[n][0]) > v]
        raise SlimifyError(f"no switch fits: even the narrowest ({_describe(narrowest)}) exceeds {', '.join(over)}; "
                           "raise the budget or convert with narrower switches")
    return max(fitting, key=lambda r: (r.flops, r.width))  # the largest: widest switch, or configuration
