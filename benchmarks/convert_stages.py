"""Where convert's time goes, stage by stage (issue 25, item 1): CPU seconds of one thread per
stage, the minimum over repeats, on a subset of the zoo at the coverage run's input.

    OMP_NUM_THREADS=1 python -m benchmarks.convert_stages [--models tv:mobilenet_v2 regnety_002] [--repeats 5] [--write]

Each stage's functions are wrapped for the run (nothing in slimify changes) and each wrapped call's
CPU time is charged to the innermost stage running (exclusive time): ``trace`` (symbolic or
concrete tracing), ``shape pass`` (one run of the traced graph for shapes), ``rules`` (the walk that
records constraints), ``groups`` and ``plan`` (also when the self-check plans again),
``check: copy`` (the skeleton), ``check: rewrite`` (the plan applied to it), ``check: runs`` (every
switch run on meta), ``check: other``, ``rewrite`` (the model itself) and ``other`` (the rest of
``convert``: input handling, the report, the alternative chunk plans' bookkeeping).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.bad_input import refuse

STAGES = ["trace", "shape pass", "rules", "groups", "plan", "check: copy", "check: rewrite", "check: runs",
          "check: other", "rewrite", "other"]
# default subset: the models the issue names as slowest against Torch-Pruning, and a few large ones
MODELS = [("torchvision", "mobilenet_v2"), ("torchvision", "mobilenet_v3_large"), ("torchvision", "regnet_y_1_6gf"),
          ("torchvision", "efficientnet_v2_s"), ("torchvision", "resnet50"), ("torchvision", "densenet121"),
          ("timm", "regnety_002"), ("timm", "convnextv2_atto"), ("timm", "ghostnet_050"),
          ("timm", "hrnet_w18_small"), ("timm", "repvit_m1"), ("timm", "efficientnet_lite0")]


def _targets() -> list[tuple[Any, str, str]]:
    """(owner, attribute, stage) of every function wrapped, as the callers look them up."""
    import slimify.analysis.stages as stages
    import slimify.analysis.trace as trace
    import slimify.check.skeleton as skeleton
    import slimify.pipeline as pipeline
    return [(stages, "trace", "trace"), (trace, "record_shapes", "shape pass"), (stages, "analyze", "rules"),
            (stages, "find_groups", "groups"), (stages, "make_plan", "plan"), (pipeline, "self_check", "check: other"),
            (skeleton, "skeleton", "check: copy"), (skeleton, "rewrite", "check: rewrite"),
            (skeleton.Runner, "_run", "check: runs"), (pipeline, "rewrite", "rewrite")]


class StageClock:
    """Exclusive CPU seconds per stage while installed (``with clock.installed(): convert(...)``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._stack: list[list[Any]] = []  # [stage, start, time of inner stages]

    def _wrap(self, fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = [stage, time.process_time(), 0.0]
            self._stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                spent = time.process_time() - frame[1]
                self.seconds[stage] += spent - frame[2]
                if self._stack:
                    self._stack[-1][2] += spent
        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in _targets()]
        try:
            for (owner, name, stage), (_, _, fn) in zip(_targets(), saved):
                setattr(owner, name, self._wrap(fn, stage))
            yield
        finally:
            for owner, name, fn in saved:
                setattr(owner, name, fn)


def time_stages(lib: str, name: str, repeats: int) -> dict[str, float]:
    """Per stage the minimum over ``repeats`` conversions (CPU s, one thread); ``total``: the
    minimum total (so the stages need not add up to it exactly)."""
    import torch

    import slimify
    from benchmarks.convert_time_compare import _records
    from benchmarks.coverage_worker import build
    record = _records()[(lib, name)]
    base = build(lib, name).eval().requires_grad_(False)
    x = torch.randn(1, *record["input"])
    best: dict[str, float] = {}
    for _ in range(repeats):
        model = copy.deepcopy(base)
        clock = StageClock()
        start = time.process_time()
        with clock.installed():
            slimify.convert(model, divisor=record.get("divisor"), example_input=x)
        total = time.process_time() - start
        clock.seconds["other"] += total - sum(clock.seconds.values())
        for stage, s in [*clock.seconds.items(), ("total", total)]:
            best[stage] = min(s, best.get(stage, float("inf")))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", help="lib:name (torchvision:mobilenet_v2, timm:regnety_002)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    from benchmarks.convert_time_compare import _records
    known = _records()
    models = MODELS if not args.models else [tuple(m.split(":", 1)) if ":" in m else ("timm", m) for m in args.models]
    unknown = [f"{lib}:{name}" for lib, name in models if (lib, name) not in known or "input" not in known[(lib, name)]]
    if unknown:
        refuse("benchmarks.convert_stages", f"unknown model {unknown[0]} (not in benchmarks/coverage.jsonl with an input size)")
    import torch
    torch.set_num_threads(1)
    rows, shares = [], {s: [] for s in STAGES}
    for lib, name in models:
        best = time_stages(lib, name, args.repeats)
        total = best["total"]
        for s in STAGES:
            shares[s].append(best[s] / total)
        rows.append(f"| {lib}:{name} | {total * 1e3:.0f} | " + " | ".join(f"{best[s] * 1e3:.0f}" for s in STAGES) + " |")
        print(rows[-1], flush=True)
    median = "| median share | 100% | " + " | ".join(f"{statistics.median(shares[s]):.0%}" for s in STAGES) + " |"
    print(median)
    if args.write:
        import os

        from benchmarks.results import machine, write_section
        command = "OMP_NUM_THREADS=1 python -m benchmarks.convert_stages" + (
            f" --models {' '.join(args.models)}" if args.models else "") + f" --repeats {args.repeats}"
        write_section("Convert time by stage", "\n".join([
            f"Command: `{command}`  ",
            f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end. CPU ms of one thread per stage, "
            f"the minimum over {args.repeats} conversions at the coverage run's input and divisor (module docstring: "
            "exclusive time of the innermost stage; `groups` and `plan` include the self-check's replanning).",
            "",
            "| model | total | " + " | ".join(STAGES) + " |",
            "|---|" + "---|" * (len(STAGES) + 1),
            *rows,
            median,
        ]))


if __name__ == "__main__":
    main()
