"""Speed of slimmable models (issue 7): the slimmable forward at each switch vs the exported plain
model of that width, width 1.0 vs the original model, and one all-switch training step vs the
sum of single-width steps of the plain models. Writes ``## Speed`` of benchmarks/RESULTS.md.

    python -m benchmarks.speed                        # CPU, 2 threads, batches 8 and 1
    python -m benchmarks.speed --models resnet50 --runs 5 --no-write
    python -m benchmarks.speed --cached-slices        # the eval-mode weight cache proposed for the core

Timings are interleaved (one call of each variant per round, in a shuffled order) and ratios are ratios of medians, so
load that drifts during a run hits every variant alike. On a shared machine wall time is
dominated by other processes; ``--clock cpu`` (default) measures the process's CPU time instead,
with OpenMP told to sleep rather than spin while waiting (``OMP_WAIT_POLICY=PASSIVE``), so
waiting for a core is not counted as work.
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

import slimify
from benchmarks.bad_input import check_models
from benchmarks.results import machine, write_section
from slimify.deploy.extract import export
from slimify.store.sources import create

MODELS = ["resnet50", "torchvision:mobilenet_v2", "efficientnet_b0", "convnext_tiny", "vit_small_patch16_224"]
SERVING = {"held": "each its own copy, set once", "switched": "one model, the width entered on every call"}
TARGETS = {"slim/export": 1.05, "w1/original": 1.05, "train": 1.05}


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


STATS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}
STAT = ["median"]  # --stat: what interleaved() keeps of each variant's rounds


def interleaved(calls: dict[str, Callable[[], Any]], runs: int, clock: Callable[[], float],
                warmup: int = 1, seed: int = 0) -> dict[str, float]:
    """Median (``--stat min``: minimum) seconds of each call, timing one call of every variant per round
    in an order shuffled every round (seeded): a call right after one of another size pays for cold
    caches and fresh pages, so no variant may always follow the same one. (A fixed order reversed every
    other round still let the narrowest slimmable width follow the original, the largest model, in
    every other round, while its exported twin never did.)"""
    order = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for r in range(warmup + runs):
        for key, call in order.sample(list(calls.items()), len(calls)):
            start = clock()
            call()
            if r >= warmup:
                times[key].append(clock() - start)
    return {k: STATS[STAT[0]](v) for k, v in times.items()}


def forward_calls(original: nn.Module, model: nn.Module, plains: dict[float, nn.Module],
                  x: torch.Tensor, serving: str = "held") -> dict[str, Callable[[], Any]]:
    """One call per variant. ``held``: each switch served by its own copy of the converted model, set
    to that width once (``slimify.set_width``), as a device runs the width it deploys; ``switched``:
    one model, the width entered on every call (each call follows one at another width, so it also
    pays for the switch: what ``set_width`` costs, and every served read's first-read path)."""
    def held(w: float) -> Callable[[], Any]:
        net = copy.deepcopy(model)
        slimify.set_width(net, w)

        def call() -> Any:
            with torch.inference_mode():
                return net(x)
        return call

    def switched(w: float) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode(), slimify.width(model, w):
                return model(x)
        return call

    def plain(net: nn.Module) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode():
                return net(x)
        return call

    slim = held if serving == "held" else switched
    calls: dict[str, Callable[[], Any]] = {"original": plain(original)}
    for w, net in plains.items():
        calls[f"slim {w:g}"] = slim(w)
        calls[f"export {w:g}"] = plain(net)
    return calls


def train_calls(model: nn.Module, plains: dict[float, nn.Module], x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """One SGD step over all switches of ``model`` vs one step of each plain width model."""
    with torch.no_grad():
        classes = plains[max(plains)](x).shape[1]
    target = torch.randint(0, classes, (x.shape[0],))
    loss_fn = nn.CrossEntropyLoss()

    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)

    def all_switches() -> None:
        optimizer.zero_grad(set_to_none=True)
        for w in slimify.switches(model):
            with slimify.width(model, w):
                loss_fn(model(x), target).backward()
        optimizer.step()

    def single(net: nn.Module) -> Callable[[], None]:
        opt = torch.optim.SGD(net.parameters(), lr=1e-6)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), target).backward()
            opt.step()
        return step

    calls: dict[str, Callable[[], Any]] = {"all-switch step": all_switches}
    calls.update({f"step {w:g}": single(net) for w, net in plains.items()})
    return calls


def bench_model(name: str, batches: list[int], runs: int, train_runs: int, size: int,
                clock: Callable[[], float], serving: str = "held") -> tuple[list[str], str]:
    torch.manual_seed(0)
    original = create(name).eval()
    model = copy.deepcopy(original)
    slimify.convert(model, example_input=torch.randn(1, 3, size, size))
    plains = {w: export(model, w).eval() for w in slimify.switches(model)}
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, size, size)
        t = interleaved(forward_calls(original, model, plains, x, serving), runs, clock)
        ratios = [t[f"slim {w:g}"] / t[f"export {w:g}"] for w in plains]
        cells = " | ".join(f"{t[f'slim {w:g}'] * 1e3:.1f} / {t[f'export {w:g}'] * 1e3:.1f} = **{r:.2f}**"
                           for w, r in zip(plains, ratios))
        rows.append(f"| {name} | {batch} | {cells} | {t['slim 1'] / t['original']:.2f} | "
                    f"{t['original'] * 1e3:.1f} |")
        print(rows[-1], flush=True)
    if train_runs == 0:  # forward only
        return rows, ""
    model.train()
    for net in plains.values():
        net.train()
    x = torch.randn(batches[0], 3, size, size)
    t = interleaved(train_calls(model, plains, x), train_runs, clock)
    total = sum(t[f"step {w:g}"] for w in plains)
    train_row = (f"| {name} | {batches[0]} | {t['all-switch step'] * 1e3:.0f} | {total * 1e3:.0f} | "
                 f"**{t['all-switch step'] / total:.2f}** |")
    print(train_row, flush=True)
    return rows, train_row


def cache_slices() -> None:
    """The serving change proposed for the core (``slimify/nn/serve.py``'s ``_param_property``):
    look private BatchNorm tensors up without ``ModuleList.__getitem__`` (its index checks were
    the largest Python cost of a narrow forward), and with autograd off serve a contiguous copy
    of each cut tensor, cached per switch until the full tensor is replaced or changed in place."""
    import slimify.rewrite.serve as serve

    def proposed_property(name: str) -> property:
        base = serve._PLAIN_PARAM_PROPERTY(name)

        def get(self: nn.Module) -> Any:
            data = self.__dict__[serve.SLIM_KEY]
            s = data.state.index
            if data.bn_slots is not None and name in serve.BN_TENSORS and data.bn_slots[s] is not None:
                holder = self._modules["slim_bn"]._modules[str(data.bn_slots[s])]
                found = holder._parameters.get(name)
                return found if found is not None else holder._buffers.get(name)
            full = self._parameters[name] if name in self._parameters else self._buffers.get(name)
            dims = data.params[name][s] if name in data.params else None
            if full is None or not dims:
                return full
            if torch.is_grad_enabled():
                return serve.cut(full, dims)
            cache = data.__dict__.setdefault("proposed_cache", {})  # the core keeps its copies in the routes now
            hit = cache.get((name, s))
            if hit is None or hit[0] is not full or hit[1] != full._version:
                hit = cache[(name, s)] = (full, full._version, serve.cut(full, dims).contiguous())
            return hit[2]
        return property(get, base.fset, doc=base.__doc__)

    serve._PLAIN_PARAM_PROPERTY = serve._param_property
    serve._param_property = proposed_property


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--runs", type=int, default=7, help="timed rounds per forward measurement")
    parser.add_argument("--train-runs", type=int, default=3, help="timed rounds of training steps (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--cached-slices", action="store_true",
                        help="measure with the serving change proposed for the core (see cache_slices)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="cpu: process CPU time (robust on a shared machine); wall: elapsed time")
    parser.add_argument("--stat", choices=sorted(STATS), default="median",
                        help="min: the minimum of the rounds (a shared machine's load only ever adds time)")
    parser.add_argument("--serving", choices=sorted(SERVING), default="held",
                        help="held: each switch its own copy set to that width once (a deployed width); "
                             "switched: one model, the width entered on every call")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    STAT[0] = args.stat
    check_models("benchmarks.speed", args.models)
    torch.set_num_threads(args.threads)
    if args.cached_slices:
        cache_slices()
    results = [bench_model(name, args.batches, args.runs, args.train_runs, args.size, CLOCKS[args.clock], args.serving)
               for name in args.models]
    if args.no_write:
        return
    command = "python -m benchmarks.speed" + (" --cached-slices" if args.cached_slices else "") + \
        f" --serving {args.serving} --runs {args.runs} --train-runs {args.train_runs} --clock {args.clock} --threads {args.threads} --stat {args.stat}"
    body = "\n".join([
        f"Command: `{command}`  ",
        f"Machine: {machine()}; input {args.size}×{args.size}, switches (0.25, 0.5, 0.75, 1.0), divisor 8, "
        f"random weights, inference_mode, slimmable widths {args.serving} ({SERVING[args.serving]}); "
        f"{args.stat}s of {args.runs} interleaved rounds (training: {args.train_runs}) "
        f"of {'process CPU time (OMP_WAIT_POLICY=' + os.environ['OMP_WAIT_POLICY'] + ')' if args.clock == 'cpu' else 'wall time'}; "
        f"load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.",
        "",
        f"Times are {f'CPU ms of the process ({args.threads} thread(s) summed), not wall time' if args.clock == 'cpu' else 'wall ms'}.",
        *(["", "With the serving change proposed for the core (`cache_slices` in benchmarks/speed.py): private "
            "BatchNorm tensors looked up without `ModuleList.__getitem__`, and with autograd off each cut tensor "
            "served as a contiguous copy cached per switch (invalidated when the full tensor changes)."]
          if args.cached_slices else []),
        "",
        "Forward: slimmable model ms / exported plain model ms = **ratio** per switch (target ≤ 1.05, issue 25); "
        "`w1/orig`: slimmable at width 1.0 / the original model (target ≤ 1.05).",
        "",
        "| model | batch | w=0.25 | w=0.5 | w=0.75 | w=1 | w1/orig | original ms |",
        "|---|---|---|---|---|---|---|---|",
        *[row for rows, _ in results for row in rows],
        "",
        "Training (train mode, SGD, cross-entropy): one step over all four switches of the slimmable model vs "
        "the sum of one step of each exported plain model (target ≤ 1.05).",
        "",
        "| model | batch | all-switch step ms | sum of single-width steps ms | ratio |",
        "|---|---|---|---|---|",
        *[train for _, train in results if train],
    ])
    write_section("Speed" + (" (cached weight slices)" if args.cached_slices else ""), body)


if __name__ == "__main__":
    main()
