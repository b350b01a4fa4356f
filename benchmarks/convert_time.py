"""Convert time, median of N conversions per model, 1 thread: the test list (issue 3) or the
whole coverage benchmark list (issue 4, compared with Torch-Pruning's DependencyGraph build).

    python -m benchmarks.convert_time [--repeats 5]            # the 31 models of tests/zoo.py
    python -m benchmarks.convert_time --sweep [--repeats 3]    # shared/models/benchmark_models.json
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import slimify
from benchmarks.results import machine, write_section
from tests.zoo import ZOO, build


def time_model(name: str, repeats: int) -> tuple[float, int, int]:
    base = build(name)
    x = torch.randn(1, 3, ZOO[name], ZOO[name])
    seconds = []
    for _ in range(repeats):
        model = copy.deepcopy(base)
        start = time.perf_counter()
        slimify.convert(model, example_input=x)
        seconds.append(time.perf_counter() - start)
    report = slimify.report(model)
    return statistics.median(seconds), len(report.groups), len(report.fixed)


def time_sweep(repeats: int) -> None:
    """Every model of the coverage list at the input the coverage run used, one process, models
    one after the other (a quiet machine: nothing else should run)."""
    import gc
    import json

    from benchmarks.coverage import JSONL, MODELS, load_results
    from benchmarks.coverage_worker import build

    recorded = load_results(JSONL)
    lists = json.loads(MODELS.read_text())
    medians: dict[str, list[float]] = {}
    for lib, names in lists.items():
        for name in names:
            record = recorded.get((lib, name), {})
            size = record.get("input")
            if not size or "convert_s" not in record:
                continue  # did not convert in the coverage run: nothing to time
            base = build(lib, name).eval().requires_grad_(False)
            x = torch.randn(1, *size)
            seconds = []
            for _ in range(repeats):
                model = copy.deepcopy(base)
                start = time.perf_counter()
                slimify.convert(model, divisor=record.get("divisor", 8), example_input=x)
                seconds.append(time.perf_counter() - start)
                del model
            medians.setdefault(lib, []).append(statistics.median(seconds))
            print(f"{lib} {name} {statistics.median(seconds):.3f}", flush=True)
            del base
            gc.collect()
    reference = {"torchvision": 0.27, "timm": 0.13}
    rows = [f"| {lib} | {len(t)} | **{statistics.median(t):.3f}** | {statistics.mean(t):.3f} | "
            f"{reference.get(lib, float('nan')):.2f} |" for lib, t in medians.items()]
    body = "\n".join([
        f"Command: `python -m benchmarks.convert_time --sweep --repeats {repeats}`  ",
        f"Machine: {machine()}, nothing else running. Per model the median of {repeats} conversions (trace, shapes from",
        "one run on the meta device or for real, analysis, plan, rewrite) at the input and divisor of the coverage run, switches",
        "(0.25, 0.5, 0.75, 1.0); models that did not convert there are left out. Torch-Pruning 1.6.0's",
        "DependencyGraph build, same lists, same machine kind, 1 thread: shared/models/README.md.",
        "",
        "| library | models | median convert s | mean s | Torch-Pruning median s |",
        "|---|---|---|---|---|",
        *rows,
    ])
    write_section("Convert time (benchmark list)", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sweep", action="store_true", help="the coverage benchmark's model list")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.sweep:
        time_sweep(args.repeats)
        return
    rows, times = [], []
    for name in ZOO:
        median, groups, fixed = time_model(name, args.repeats)
        times.append(median)
        rows.append(f"| {name} | {ZOO[name]} | {median:.3f} | {groups} | {fixed} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        f"Command: `python -m benchmarks.convert_time --repeats {args.repeats}`  ",
        f"Machine: {machine()}. Median of {args.repeats} conversions (trace, shapes from one run at the",
        "given input size, analysis, plan, rewrite), switches (0.25, 0.5, 0.75, 1.0), divisor 8.",
        "",
        f"Median over the {len(ZOO)} models: **{statistics.median(times):.3f} s**.",
        "",
        "| model | input | convert s (median) | groups | fixed groups |",
        "|---|---|---|---|---|",
        *rows,
    ])
    write_section("Convert time (issue 3 test list)", body)


if __name__ == "__main__":
    main()
