"""Latency a user can trust on a machine that is not quiet: warm up, then time rounds of forwards
until the median stops moving, report the spread, and warn when the numbers are noisy or when a
wider switch comes out faster than a narrower one (which a budget would then trust wrongly).

    >>> stats = measure_latency(net, x, runs=20, warmup=3)
    >>> stats.median_ms, stats.iqr_ms, stats.runs, stats.stable
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from slimify.analysis.example_inputs import ExampleCall

__all__ = ["LatencyStats", "measure_latency", "latency_warnings", "MAX_ROUNDS", "STABLE", "NOISY"]

MAX_ROUNDS = 5  # rounds of ``runs`` timed forwards at most
STABLE = 0.03  # the median is stable when a round moves it by less than this fraction
NOISY = 0.25  # interquartile range above this fraction of the median: a noisy measurement
MONOTONE_SLACK = 0.05  # a wider switch faster by more than this fraction: not monotone


@dataclass
class LatencyStats:
    median_ms: float
    p90_ms: float
    iqr_ms: float  # interquartile range of the timed runs (the spread)
    runs: int  # timed runs in total
    stable: bool  # the last round moved the median by less than STABLE


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def measure_latency(model: nn.Module, x: Any, runs: int, warmup: int, max_rounds: int = MAX_ROUNDS,
                    tolerance: float = STABLE) -> LatencyStats:
    """Median, p90 and spread (ms) of ``model(x)`` (``x``: one input, a tuple of inputs or an
    ``ExampleCall``) after ``warmup`` untimed calls: rounds of ``runs`` timed calls until a round
    moves the median by less than ``tolerance`` (at most ``max_rounds``); CUDA is synchronised
    around each call."""
    call = ExampleCall.of(x)
    sync: Any = (lambda: torch.cuda.synchronize(call.device)) if call.device.type == "cuda" else (lambda: None)
    times: list[float] = []
    previous = None
    stable = False
    with torch.inference_mode():
        for _ in range(warmup):
            call.run(model)
        for _ in range(max_rounds):
            for _ in range(runs):
                sync()
                start = time.perf_counter()
                call.run(model)
                sync()
                times.append((time.perf_counter() - start) * 1e3)
            median = statistics.median(times)
            if previous is not None and abs(median - previous) <= tolerance * previous:
                stable = True
                break
            previous = median
    ordered = sorted(times)
    return LatencyStats(statistics.median(ordered), _quantile(ordered, 0.9),
                        _quantile(ordered, 0.75) - _quantile(ordered, 0.25), len(times), stable)


def latency_warnings(rows: list[Any]) -> list[str]:
    """Warnings about measured rows (``width``, ``latency_ms``, ``latency_iqr_ms``,
    ``latency_stable``; narrowest first): noisy or unstable timings, and latency that is not
    monotone in width."""
    timed = [r for r in rows if r.latency_ms is not None]
    notes = []
    noisy = [r for r in timed if r.latency_iqr_ms is not None and r.latency_iqr_ms > NOISY * r.latency_ms]
    unstable = [r for r in timed if r.latency_stable is False]
    if noisy or unstable:
        widths = ", ".join(f"{w:g}" for w in sorted({r.width for r in noisy + unstable}))
        notes.append(f"latency is noisy at width {widths} (spread over {NOISY:.0%} of the median, or the median did "
                     "not settle): the machine is busy; close other work, use --threads 1 or more --runs")
    for narrow, wide in zip(timed, timed[1:]):
        if wide.latency_ms < narrow.latency_ms * (1 - MONOTONE_SLACK):
            notes.append(f"latency is not monotone in width: {wide.width:g} measured {wide.latency_ms:.2f} ms, "
                         f"faster than {narrow.width:g} ({narrow.latency_ms:.2f} ms); a latency budget may pick "
                         "wrongly — measure again")
    return notes
