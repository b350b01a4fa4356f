"""Measure what each switch costs on this device (parameters, MACs/FLOPs, latency, peak memory),
so a user can pick the widest width that fits a budget; results are data, a table, JSON, CSV
or a latency plot.

    >>> result = slimify.profile(model, input_size=(1, 3, 224, 224), runs=20, threads=4)
    >>> print(result.table())
    >>> result.to_json("profile.json"); result.plot("profile.png")
"""
from __future__ import annotations

import csv
import io as _io
import json
import platform
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from slimify.analysis.example_inputs import ExampleCall
from slimify.deploy.extract import active_params, export
from slimify.deploy.latency import latency_warnings, measure_latency
from slimify.errors import SlimifyError
from slimify.state import get_state
from slimify.state import width as at_width
from slimify.store.atomic import atomic_path
from slimify.store.slimfile import example_call

__all__ = ["profile", "ProfileResult", "SwitchProfile", "measure_memory", "input_shape", "MEMORY_METHOD"]

MEMORY_METHOD = {
    "cpu": "parameters + buffers + input + peak bytes of tensors that ATen ops allocate during one forward "
           "(TorchDispatchMode; a storage counts until it is freed; allocator caches and the runtime not included)",
    "cuda": "parameters + buffers + input + (torch.cuda.max_memory_allocated − memory_allocated before) "
            "during one forward",
}


@dataclass
class SwitchProfile:
    """Costs of one switch for one batch of the profiled input size."""

    width: float
    params: int  # parameters the switch uses
    macs: int  # multiply-accumulates (torch.utils.flop_counter, FLOPs / 2)
    flops: int
    latency_ms: float | None  # median over the timed runs (None: not timed, e.g. pick without a latency budget)
    latency_p90_ms: float | None
    memory_mb: float  # see ProfileResult.memory_method
    activation_mb: float  # the peak-activation part of memory_mb
    accuracy: float | None = None  # filled in by the caller (e.g. from slimify.evaluate)
    latency_iqr_ms: float | None = None  # spread: interquartile range of the timed runs
    latency_runs: int | None = None  # timed runs: rounds of ``runs`` until the median settled
    latency_stable: bool | None = None  # whether it settled (see slimify.deploy.latency)
    config: str = ""  # a named width configuration (``slimify.configs``); width is then its kept fraction


@dataclass
class ProfileResult:
    """One row per switch, narrowest first, with the conditions they were measured under."""

    model: str
    input_size: tuple[int, ...]
    device: str
    threads: int
    runs: int
    warmup: int
    mode: str  # "export": each width as its exported plain model; "slim": the slimmable model itself
    memory_method: str
    machine: str = field(default_factory=lambda: f"{platform.machine()} {platform.processor() or ''}".strip())
    rows: list[SwitchProfile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # noisy or non-monotone latency (slimify.deploy.latency)

    def row(self, w: float) -> SwitchProfile:
        for r in self.rows:
            if abs(r.width - w) < 1e-9:
                return r
        raise SlimifyError(f"width {w} was not profiled; profiled: {[r.width for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        head = (f"{self.model} on {self.device} ({self.threads} thread(s)), input {list(self.input_size)}, "
                f"{self.runs} runs after {self.warmup} warm-up, mode {self.mode}")
        n = max([6, *(len(r.config) for r in self.rows)])  # a configuration's name, in full
        cols = f"{'width':>{n}} | {'params':>10} | {'MMACs':>9} | {'GFLOPs':>7} | {'ms (median)':>11} | " \
               f"{'± IQR':>6} | {'runs':>4} | {'ms (p90)':>8} | {'memory MB':>9}" + \
               (" | accuracy" if self._has_accuracy() else "")
        lines = [head, "", cols]
        for r in self.rows:
            acc = (f" | {r.accuracy:8.2f}" if r.accuracy is not None else f" | {'?':>8}") if self._has_accuracy() else ""
            timed = (f"{r.latency_ms:>11.2f} | {r.latency_iqr_ms or 0:>6.2f} | {r.latency_runs or self.runs:>4} | "
                     f"{r.latency_p90_ms:>8.2f}") if r.latency_ms is not None else \
                f"{'not timed':>11} | {'':>6} | {'':>4} | {'':>8}"
            lines.append(f"{r.config or f'{r.width:g}':>{n}} | {r.params:>10,} | {r.macs / 1e6:>9.1f} | "
                         f"{r.flops / 1e9:>7.3f} | {timed} | {r.memory_mb:>9.1f}{acc}")
        unknown = [r.config or f"{r.width:g}" for r in self.rows if r.accuracy is None]
        lines += ["", f"memory: {self.memory_method}"] + [f"warning: {w}" for w in self.warnings]
        if self._has_accuracy() and unknown:
            lines.append(f"accuracy ?: not evaluated for {', '.join(unknown)} (slimify eval --widths … --json, then "
                         "--accuracy FILE)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def _has_accuracy(self) -> bool:
        return any(r.accuracy is not None for r in self.rows)

    def to_json(self, path: str | Path, overwrite: bool = False) -> Path:
        with atomic_path(path, overwrite) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
        return Path(path)

    def to_csv(self, path: str | Path, overwrite: bool = False) -> Path:
        buffer = _io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(asdict(self.rows[0])) + ["device", "threads", "input_size"])
        writer.writeheader()
        for r in self.rows:
            writer.writerow({**asdict(r), "device": self.device, "threads": self.threads,
                             "input_size": "x".join(map(str, self.input_size))})
        with atomic_path(path, overwrite) as tmp:
            tmp.write_text(buffer.getvalue())
        return Path(path)

    def plot(self, path: str | Path, overwrite: bool = False) -> Path:
        """Accuracy against cost, one point per switch labelled by its width, when every row has an
        accuracy; else cost against cost, named for what it shows (see :mod:`slimify.deploy.profile_plot`)."""
        from slimify.deploy.profile_plot import plot_profile

        return plot_profile(self, path, overwrite)


class _LiveBytes(TorchDispatchMode):
    """Counts bytes of storages that ops create (not views of their inputs) until they are freed."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        inputs = {t.untyped_storage().data_ptr() for t in pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key, n = storage.data_ptr(), storage.nbytes()
                if n and key not in inputs and key not in self.live:
                    self.live[key] = n
                    self.current += n
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def _tensor_bytes(model: nn.Module) -> int:
    seen = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in seen.values())


def measure_memory(model: nn.Module, x: Any) -> tuple[float, float]:
    """(total MB, peak-activation MB) of one inference forward on ``x`` (one input, a tuple of
    inputs or an ``ExampleCall``); see :data:`MEMORY_METHOD`."""
    call = ExampleCall.of(x)
    fixed, dev = _tensor_bytes(model) + call.nbytes, call.device
    with torch.inference_mode():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            call.run(model)
            torch.cuda.synchronize(dev)
            activation = torch.cuda.max_memory_allocated(dev) - base
        else:
            with _LiveBytes() as tracker:
                call.run(model)
            activation = tracker.peak
    return (fixed + activation) / 2**20, activation / 2**20


def input_shape(input_size: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """224 → (1, 3, 224, 224); (3, 224, 224) → (1, 3, 224, 224); a 4-tuple stays as it is."""
    shape = (1, 3, input_size, input_size) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise SlimifyError(f"input size must be N, (C, H, W) or (B, C, H, W) with positive sizes, got {input_size}")
    return shape


def profile(model: nn.Module, input_size: int | tuple[int, ...] | None = None, runs: int = 20, warmup: int = 3,
            threads: int | None = None, device: str | torch.device | None = None,
            widths: tuple[Any, ...] | list[Any] | None = None, mode: str = "export",
            latency: bool = True) -> ProfileResult:
    """Profile every switch and named configuration (or ``widths``: switches, uniform widths in
    range, configuration names) of the converted ``model`` on one batch of ``input_size`` (default:
    the shape it was converted with). A model of several or keyword inputs is called in the form it
    was converted on, ``input_size`` setting the shape of its first tensor and the batch of all.

    ``mode="export"`` measures each width as the plain model :func:`slimify.export` makes (what
    you deploy); ``"slim"`` the slimmable model itself. ``threads`` sets torch's intra-op threads
    for the measurement (default: the current setting) and is recorded with the result. Latency:
    ``warmup`` untimed forwards, then rounds of ``runs`` until the median settles
    (:func:`slimify.deploy.latency.measure_latency`); ``latency=False`` times nothing."""
    get_state(model)  # not slimmable: one clear error first
    if runs < 1 or warmup < 0:
        raise SlimifyError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    if mode not in ("export", "slim"):
        raise SlimifyError(f"mode must be 'export' or 'slim', got {mode!r}")
    if threads is not None and threads < 1:
        raise SlimifyError(f"threads must be >= 1, got {threads}")
    from slimify.device import resolve_device

    dev = resolve_device(device or "cpu")  # an unknown device or missing CUDA is a SlimifyError
    call = example_call(model) if input_size is None else \
        example_call(model, batch=input_shape(input_size)[0], shape=input_shape(input_size))
    shape = tuple(call.first.shape)
    chosen = _chosen(model, widths)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or previous_threads)
    name = type(model).__name__
    result = ProfileResult(name, shape, str(dev), torch.get_num_threads(), runs, warmup, mode,
                           MEMORY_METHOD["cuda" if dev.type == "cuda" else "cpu"])
    home = next(model.parameters(), torch.empty(0)).device
    try:
        if mode == "slim":
            model.to(dev)
        x = call.to(dev)
        for size, value, name in chosen:
            row = _profile_one(model, value, x, runs, warmup, mode, dev, latency)
            row.width, row.config = size, name
            result.rows.append(row)
        result.warnings = latency_warnings(result.rows)
    finally:
        torch.set_num_threads(previous_threads)
        model.to(home)
    return result


def _chosen(model: nn.Module, widths: Any) -> list[tuple[float, Any, str]]:
    """(width, value, name) to profile, narrowest first: switches and named configurations by
    default; a name or a uniform width checked (SlimifyError) before anything is measured."""
    from slimify.rewrite.config_names import configs
    from slimify.state import slot_of

    state = get_state(model)
    named = {name: value for name, value in configs(model).items()} if widths is None else {}
    values = [(v, "" if isinstance(v, float) and v in state.switches else k) for k, v in named.items()] \
        if widths is None else [(w, w if isinstance(w, str) else "") for w in widths]
    out = []
    for value, name in values:
        i = slot_of(model, value)
        size = state.switches[i] if i < len(state.switches) else state.slots[i - len(state.switches)].width
        out.append((size, value, name))
    return sorted(out, key=lambda t: t[0])


def _profile_one(model: nn.Module, w: Any, x: ExampleCall, runs: int, warmup: int, mode: str,
                 dev: torch.device, timed: bool = True) -> SwitchProfile:
    from torch.utils.flop_counter import FlopCounterMode

    params = active_params(model, w)
    if mode == "export":
        net, restore = export(model, w).eval().to(dev), None
    else:
        net, restore = model, at_width(model, w)
        restore.__enter__()
        was_training = model.training
        model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            x.run(net)
        flops = int(counter.get_total_flops())
        memory, activation = measure_memory(net, x)
        stats = measure_latency(net, x, runs, warmup) if timed else None
    finally:
        if restore is not None:
            restore.__exit__(None, None, None)
            model.train(was_training)
    if stats is None:
        return SwitchProfile(w, params, flops // 2, flops, None, None, round(memory, 3), round(activation, 3))
    return SwitchProfile(w, params, flops // 2, flops, round(stats.median_ms, 4), round(stats.p90_ms, 4),
                         round(memory, 3), round(activation, 3), latency_iqr_ms=round(stats.iqr_ms, 4),
                         latency_runs=stats.runs, latency_stable=stats.stable)
