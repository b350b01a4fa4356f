"""GPU speed of slimmable training and inference (issues 15 and 25), for a CUDA machine: images/s of
one all-switch training step vs the sum of the exported plain models' steps (bf16 autocast +
channels-last, eager and torch.compile'd), forward latency of the slimmable model at each switch
vs its exported plain model at batch 1, 64 and 256 (eager and compiled), the peak memory of each
(per switch), and the time ``slimify.export`` takes per switch. Writes ``## GPU`` of
benchmarks/RESULTS.md with the GPU's name and the run's length. On a machine without CUDA it says
so in one line and exits with status 2; ``--cpu-smoke`` runs every code path on the CPU.

    python -m benchmarks.gpu                                   # resnet50, mobilenetv2_100, vit_small
    python -m benchmarks.gpu --models resnet50 --batch 128 --no-compile --no-write
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn as nn

import slimify
from benchmarks.bad_input import check_models, refuse
from benchmarks.results import machine, write_section
from slimify.deploy.extract import export
from slimify.store.sources import create
from slimify.train.compile import compile_model

MODELS = ["resnet50", "mobilenetv2_100", "vit_small_patch16_224"]
SWITCHES = (0.25, 0.5, 0.75, 1.0)
BATCHES = (1, 64, 256)  # forward batch sizes (issue 25: 1/64/256)
HEADING = "GPU"
BACKEND: bool | str = True  # torch.compile backend (True: inductor); tests check the compiled paths with aot_eager


def median_ms(fn: Callable[[], object], runs: int, warmup: int, device: str) -> float:
    """Median milliseconds of ``fn`` (CUDA events on a GPU; wall clock for the CPU smoke run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        if device != "cuda":
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               widths: tuple[float, ...] | None) -> Callable[[], None]:
    """One optimizer step over ``widths`` (None: a plain model, one forward/backward)."""
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for w in widths or (None,):
            ctx = slimify.width(model, w) if w is not None else contextlib.nullcontext()
            with ctx, torch.autocast(x.device.type, dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
        opt.step()
    return step


def prepare(model: nn.Module, compiled: bool, device: str) -> nn.Module:
    """``model`` on ``device``, channels-last, compiled the way ``finetune`` compiles (``compile_model``).
    Dynamo's caches are reset first: the plain and slimmable copies share forward code, whose graphs
    would otherwise add up past the recompile limit and run eager, unnoticed, from then on."""
    model = model.to(device).to(memory_format=torch.channels_last)
    if not compiled:
        return model
    torch._dynamo.reset()
    return compile_model(model, BACKEND, len(SWITCHES))


def peak_gib(fn: Callable[[], None], device: str) -> float | None:
    """Peak memory of one call of ``fn`` above what was allocated before it (GiB; None off CUDA)."""
    if device != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


def _gib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} GiB"


def export_rows(name: str, slim: nn.Module, runs: int) -> tuple[list[str], dict[float, nn.Module]]:
    """Each switch exported as a plain model (``slimify.export``): the seconds it takes, min of a few."""
    rows, plains = [], {}
    for w in SWITCHES:
        times = []
        for _ in range(max(1, min(runs, 3))):
            t = time.perf_counter()
            plains[w] = export(slim, w)
            times.append(time.perf_counter() - t)
        rows.append(f"| {name} | export w={w:g} (slimify.export, CPU) | {min(times) * 1000:.0f} ms | | | |")
    return rows, plains


def train_rows(name: str, slim: nn.Module, plains: dict[float, nn.Module], batch: int, size: tuple[int, ...],
               runs: int, warmup: int, compiled: bool, device: str) -> list[str]:
    """One all-switch training step (bf16) against the sum of one step of each exported width."""
    mode = "compiled" if compiled else "eager"
    x = torch.randn(batch, *size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    net = prepare(copy.deepcopy(slim).train(), compiled, device)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    step = train_step(net, opt, x, y, SWITCHES)
    ms_slim = median_ms(step, runs, warmup, device)
    peak = peak_gib(step, device)
    ms_plain = 0.0
    for plain in plains.values():
        p = prepare(copy.deepcopy(plain).train(), compiled, device)
        ms_plain += median_ms(train_step(p, torch.optim.SGD(p.parameters(), lr=1e-3), x, y, None), runs, warmup,
                              device)
    return [f"| {name} | train step, {mode}, batch {batch} | {batch * 1000 / ms_slim:.0f} img/s | "
            f"{batch * 1000 / ms_plain:.0f} img/s (sum of {len(plains)} plain) | {ms_slim / ms_plain:.2f} | "
            f"{_gib(peak)} |"]


def forward_rows(name: str, slim: nn.Module, plains: dict[float, nn.Module], batches: tuple[int, ...],
                 size: tuple[int, ...], runs: int, warmup: int, compiled: bool, device: str) -> list[str]:
    """Every switch against its exported plain model at each batch size, with the peak memory of
    one forward of each (slimmable / plain). Each model is compiled once per mode: the batch sizes
    only add dynamo's recompiles for new shapes."""
    mode = "compiled" if compiled else "eager"
    s = prepare(copy.deepcopy(slim).eval(), compiled, device)
    ps = {w: prepare(copy.deepcopy(plain).eval(), compiled, device) for w, plain in plains.items()}
    rows = []
    for bs in batches:
        xi = torch.randn(bs, *size, device=device).contiguous(memory_format=torch.channels_last)
        for w, p in ps.items():

            def fwd_slim(s: nn.Module = s, w: float = w, xi: torch.Tensor = xi) -> None:
                with torch.no_grad(), slimify.width(s, w), torch.autocast(device, dtype=torch.bfloat16):
                    s(xi)

            def fwd_plain(p: nn.Module = p, xi: torch.Tensor = xi) -> None:
                with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
                    p(xi)

            a, b = median_ms(fwd_slim, runs, warmup, device), median_ms(fwd_plain, runs, warmup, device)
            memory = f"{_gib(peak_gib(fwd_slim, device))} / {_gib(peak_gib(fwd_plain, device))}"
            rows.append(f"| {name} | forward w={w:g} batch {bs}, {mode} | {a:.2f} ms | {b:.2f} ms | {a / b:.2f} | "
                        f"{memory} |")
    return rows


def bench_model(name: str, batch: int, runs: int, warmup: int, compile_modes: list[bool],
                device: str = "cuda", image: int | None = None, batches: tuple[int, ...] = BATCHES) -> list[str]:
    """Every row of one model: export times, then per mode the training step and the forwards."""
    from slimify.analysis.example_inputs import default_input

    base = create(name).eval()
    size = (3, image, image) if image else tuple(default_input(base).shape[1:])
    slim = slimify.convert(copy.deepcopy(base), switches=SWITCHES, example_input=torch.randn(1, *size))
    rows, plains = export_rows(name, slim, runs)
    for compiled in compile_modes:
        rows += train_rows(name, slim, plains, batch, size, runs, warmup, compiled, device)
        rows += forward_rows(name, slim, plains, batches, size, runs, warmup, compiled, device)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch", type=int, default=64, help="training batch size")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="forward batch sizes, comma-separated")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--image-size", type=int, help="H=W of the inputs (default: each model's own)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run every code path on the CPU (tiny settings, wall clock, nothing written): a check "
                             "of this script, not a measurement")
    args = parser.parse_args(argv)
    check_models("benchmarks.gpu", args.models.split(","))
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        refuse("benchmarks.gpu", f"--batches takes comma-separated integers, got {args.batches!r}")
    if not batches or min(batches) < 1:
        refuse("benchmarks.gpu", f"--batches takes batch sizes of at least 1, got {args.batches!r}")
    if args.cpu_smoke:
        for name in args.models.split(","):
            print("\n".join(bench_model(name.strip(), args.batch, args.runs, args.warmup, [False], "cpu",
                                         args.image_size, batches)))
        return 0
    if not torch.cuda.is_available():
        refuse("benchmarks.gpu", f"no CUDA device on this machine (torch {torch.__version__}); nothing measured, "
               "RESULTS.md unchanged (run it where there is a GPU, or --cpu-smoke to check the script)")
    modes = [False] if args.no_compile else [False, True]
    rows = ["| model | what | slimmable | plain | ratio | peak memory (slimmable / plain) |",
            "|---|---|---:|---:|---:|---:|"]
    started = time.perf_counter()
    for name in args.models.split(","):
        rows += bench_model(name.strip(), args.batch, args.runs, args.warmup, modes, "cuda", args.image_size,
                            batches)
        print("\n".join(rows), flush=True)
    gpu = torch.cuda.get_device_name()
    body = (f"`python -m benchmarks.gpu {' '.join(argv if argv is not None else sys.argv[1:])}` on {gpu} "
            f"({machine()}); bf16 autocast, channels-last, medians of {args.runs} runs. A training step runs "
            f"all {len(SWITCHES)} switches; 'plain' is the sum of one step of each exported width. Peak memory: "
            f"above what was allocated before the call. The whole run took {time.perf_counter() - started:.0f} s."
            "\n\n"
            + "\n".join(rows))
    if not args.no_write:
        write_section(HEADING, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
