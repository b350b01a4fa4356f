"""What the self-check (slimify/check/selfcheck.py) adds to convert time: each model converted with and
without it, alternating in one process so both see the same machine load; per model the median
CPU and wall time of N conversions each way (tests/zoo.py models at their test input size).

    python -m benchmarks.selfcheck_cost [--repeats 5] [--only tv:resnet50 ...]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

import slimify
import slimify.pipeline  # noqa: F401 - ``slimify`` loads it lazily; measure() swaps its self_check
from benchmarks.results import machine, write_section
from tests.zoo import ZOO, build

MODELS = ("tv:resnet50", "tv:mobilenet_v2", "tv:convnext_tiny", "efficientnet_b0", "tv:densenet121", "mixnet_s")


def _skipped(model, example, space, table, plan, replan, output=None):  # noqa: ANN001, ANN202 - self_check's signature
    return table, plan


def measure(name: str, repeats: int) -> tuple[float, ...]:
    """Median CPU s, median wall s and minimum CPU s, without and with the self-check (the
    minimum: least disturbed by other jobs on a shared machine)."""
    pipeline = sys.modules["slimify.pipeline"]  # the module whose convert passes self_check to the analysis
    check = pipeline.self_check
    base, x = build(name), torch.randn(1, 3, ZOO[name], ZOO[name])
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    try:
        for r in range(repeats):
            for on in (r % 2 == 0, r % 2 == 1):
                pipeline.self_check = check if on else _skipped
                model = copy.deepcopy(base)
                cpu, wall = time.process_time(), time.perf_counter()
                slimify.convert(model, example_input=x)
                times[on].append((time.process_time() - cpu, time.perf_counter() - wall))
    finally:
        pipeline.self_check = check
    med = {on: [statistics.median(t[i] for t in times[on]) for i in (0, 1)] for on in times}
    low = {on: min(t[0] for t in times[on]) for on in times}
    return med[False][0], med[True][0], med[False][1], med[True][1], low[False], low[True]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.only:
        cpu_off, cpu_on, wall_off, wall_on, low_off, low_on = measure(name, args.repeats)
        rows.append(f"| {name} | {cpu_off:.3f} | {cpu_on:.3f} | {(cpu_on / cpu_off - 1) * 100:+.0f}% | "
                    f"{low_off:.3f} | {low_on:.3f} | {(low_on / low_off - 1) * 100:+.0f}% | "
                    f"{wall_off:.3f} | {wall_on:.3f} |")
        print(rows[-1], flush=True)
    write_section("Self-check cost", "\n".join([
        f"Command: `OMP_NUM_THREADS=1 python -m benchmarks.selfcheck_cost --repeats {args.repeats}`  ",
        f"Machine: {machine()}. Convert with default arguments at the test input size, with and without the",
        "self-check, alternating in one process (same load for both); median and minimum of the repeats each way.",
        "",
        "| model | CPU s without | CPU s with | added | min CPU s without | min CPU s with | added (min) "
        "| wall s without | wall s with |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]))


if __name__ == "__main__":
    main()
