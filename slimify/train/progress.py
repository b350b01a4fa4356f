"""What a run tells its user: a tqdm bar with per-switch loss and throughput on a terminal, and a
JSONL log (one JSON object per line) that tools and tests can read back."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["RunLog", "LossMeter", "progress_bar", "show_progress", "read_log"]


def show_progress(progress: bool | None = None) -> bool:
    """``None``: a bar only on an interactive terminal outside CI."""
    if progress is not None:
        return progress
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True,
                leave=False, unit="step")


class LossMeter:
    """Per-switch mean loss over an epoch, plus a smoothed value for the bar, and throughput."""

    def __init__(self) -> None:
        self.sums: dict[float, float] = {}
        self.counts: dict[float, int] = {}
        self.smooth: dict[float, float] = {}
        self.images = 0
        self.start = time.perf_counter()
        self.timed: tuple[float, int] | None = None  # (time, images) when the first step ended

    def update(self, losses: dict[float, float], images: int) -> None:
        for w, v in losses.items():
            self.sums[w] = self.sums.get(w, 0.0) + v
            self.counts[w] = self.counts.get(w, 0) + 1
            self.smooth[w] = v if w not in self.smooth else 0.9 * self.smooth[w] + 0.1 * v
        self.images += images
        if self.timed is None:  # the first step pays for loader start-up (and a resume's fast-forward)
            self.timed = (time.perf_counter(), self.images)

    def means(self) -> dict[float, float]:
        return {w: self.sums[w] / self.counts[w] for w in sorted(self.sums, key=_order, reverse=True)}

    def throughput(self) -> float:
        """Images per second over the steps after the first (over all of them while there is one)."""
        if self.timed is None or self.images == self.timed[1]:
            return self.images / max(1e-9, time.perf_counter() - self.start)
        return (self.images - self.timed[1]) / max(1e-9, time.perf_counter() - self.timed[0])

    def postfix(self) -> dict[str, str]:
        fields = {f"{w:g}" if isinstance(w, float) else str(w): f"{v:.3f}"
                  for w, v in sorted(self.smooth.items(), key=lambda p: _order(p[0]), reverse=True)}
        fields["img/s"] = f"{self.throughput():.0f}"
        return fields


def _order(key: Any) -> float:
    """Widths sort by value; a named key (the sandwich's random widths) between them."""
    return key if isinstance(key, (int, float)) else 0.5


class RunLog:
    """Appends JSON lines to ``path`` (``None`` or non-main processes: writes nothing)."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    return float(value) if hasattr(value, "__float__") else str(value)


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL run log."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
