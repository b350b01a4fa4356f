"""Latency on this device, per layer: a table that times each layer shape once, so a search does
not time every candidate network from scratch, and the real latency of an exported width."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

__all__ = ["LatencyTable", "median_ms", "real_latency"]


class LatencyTable:
    """Milliseconds per (layer, input shape, output shape), each timed once alone on the device;
    a configuration's estimate is the sum over its layers, scaled by how far the table was off for
    the full width (ops outside the timed layers: activations, adds, Python)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, runs: int = 10) -> None:
        self.model, self.x, self.runs = model, x, runs
        self.times: dict[tuple, float] = {}
        self.scale = 1.0

    def _layers(self) -> list[tuple[str, nn.Module, tuple, torch.Tensor]]:
        seen: list[tuple[str, nn.Module, tuple, torch.Tensor]] = []
        hooks = []
        for path, m in self.model.named_modules():
            if not list(m.children()) and (list(m.parameters(recurse=False)) or list(m.buffers(recurse=False))):
                def record(mod: nn.Module, args: Any, out: Any, path: str = path) -> None:
                    if args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                        seen.append((path, mod, (tuple(args[0].shape), tuple(out.shape)), args[0]))
                hooks.append(m.register_forward_hook(record))
        try:
            with torch.inference_mode():
                self.model(self.x)
        finally:
            for h in hooks:
                h.remove()
        return seen

    def estimate(self) -> float:
        """Estimated latency (ms) of the model at its active configuration."""
        total = 0.0
        for path, module, shapes, x in self._layers():
            key = (path, shapes)
            if key not in self.times:
                self.times[key] = median_ms(lambda m=module, a=x: m(a), self.runs, self.x.device)
            total += self.times[key]
        return total * self.scale


def median_ms(fn: Callable[[], Any], runs: int, device: torch.device) -> float:
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(runs + 2):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= 2:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def real_latency(model: nn.Module, value: Any, x: torch.Tensor, runs: int) -> float:
    from slimify.deploy.extract import export

    plain = export(model, value).eval().to(x.device)
    return median_ms(lambda: plain(x), runs, x.device)
