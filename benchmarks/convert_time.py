"""Convert time per model of the test list (issue 3): median of N conversions, 1 thread.

    python benchmarks/convert_time.py [--repeats 5]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, times = [], []
    for name in ZOO:
        median, groups, fixed = time_model(name, args.repeats)
        times.append(median)
        rows.append(f"| {name} | {ZOO[name]} | {median:.3f} | {groups} | {fixed} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        f"Command: `python -m benchmarks.convert_time --repeats {args.repeats}`  ",
        f"Machine: {machine()}. Median of {args.repeats} conversions (trace, shapes from one forward at the",
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
