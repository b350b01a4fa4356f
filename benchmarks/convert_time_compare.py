"""Convert time of this checkout against a baseline checkout, model by model, interleaved.

    git worktree add /tmp/baseline 6d6b825       # the code to compare with (any older commit)
    python -m benchmarks.convert_time_compare --baseline /tmp/baseline [--step 1] [--repeats 5] [--rounds 2] [--write]

Why interleaved: on a shared machine the load changes over minutes, so two sweeps run one after
the other (``convert_time --sweep``) differ by more than the code does. Here two persistent worker
processes (this checkout's ``slimify`` and the baseline's, one thread each, pinned to the same CPU:
``--cpu``) convert one model at a time, by turns, in alternating order, so both see the same load; each reports the minimum CPU time
(``time.process_time``) of ``--repeats`` conversions, and with ``--rounds`` the whole list is run
again and the minimum per model kept. Models and inputs are those of the coverage run
(``benchmarks/coverage.jsonl``); the divisor is the coverage run's (the automatic one), or 8 for
a baseline that has no automatic divisor. The summary is the median over models of new/baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
JSONL = HERE / "benchmarks" / "coverage.jsonl"


def _records() -> dict[tuple[str, str], dict]:
    records = {}
    for line in JSONL.read_text().splitlines():
        record = json.loads(line)
        records[(record["lib"], record["name"])] = record
    return records


def worker(root: str, cpu: int | None) -> None:
    """Read ``lib name repeats`` lines; answer ``seconds`` (min CPU time of ``repeats`` conversions)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    import copy
    import gc
    import inspect
    import warnings

    sys.path.insert(0, root)
    import slimify  # the checkout under ``root``
    sys.path.remove(root)
    import torch

    from benchmarks.coverage_worker import build  # this checkout's model builder (no slimify in it)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    records = _records()
    auto = inspect.signature(slimify.convert).parameters["divisor"].default is None
    print("ready", flush=True)
    for line in sys.stdin:
        lib, name, repeats = line.split()
        record = records[(lib, name)]
        base = build(lib, name).eval().requires_grad_(False)
        x = torch.randn(1, *record["input"])
        divisor = record.get("divisor") if auto else (record.get("divisor") or 8)
        seconds = []
        for _ in range(int(repeats)):
            model = copy.deepcopy(base)
            start = time.process_time()
            slimify.convert(model, divisor=divisor, example_input=x)
            seconds.append(time.process_time() - start)
            del model
        del base
        gc.collect()
        print(f"{min(seconds):.5f}", flush=True)


def _start(root: Path, cpu: int | None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE))
    pin = [] if cpu is None else ["--cpu", str(cpu)]
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.convert_time_compare", "--worker", str(root), *pin],
                            cwd=HERE, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"the worker for {root} did not start")
    return proc


def compare(baseline: Path, step: int, repeats: int, rounds: int,
            cpu: int | None) -> dict[str, dict[str, tuple[float, float]]]:
    """lib → model → (baseline seconds, new seconds)."""
    from benchmarks.coverage import MODELS
    records = _records()
    lists = json.loads(MODELS.read_text())
    workers = {"baseline": _start(baseline, cpu), "new": _start(HERE, cpu)}
    found: dict[str, dict[str, dict[str, float]]] = {}
    turn = 0
    for _ in range(rounds):
        for lib, names in lists.items():
            for name in names[::step]:
                record = records.get((lib, name), {})
                if not record.get("input") or "convert_s" not in record:
                    continue  # did not convert in the coverage run
                turn += 1
                for which in (("baseline", "new") if turn % 2 else ("new", "baseline")):
                    proc = workers[which]
                    proc.stdin.write(f"{lib} {name} {repeats}\n")
                    proc.stdin.flush()
                    seconds = float(proc.stdout.readline())
                    slot = found.setdefault(lib, {}).setdefault(name, {})
                    slot[which] = min(seconds, slot.get(which, float("inf")))
                print(lib, name, " ".join(f"{k} {v:.3f}" for k, v in found[lib][name].items()), flush=True)
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()
    return {lib: {n: (t["baseline"], t["new"]) for n, t in models.items()} for lib, models in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--step", type=int, default=1, help="every STEP-th model of each list")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1,
                        help="the one CPU both workers run on (default: the last; -1: not pinned)")
    parser.add_argument("--write", action="store_true", help="write the table to benchmarks/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpu = None if args.cpu < 0 else args.cpu
    if args.worker:
        return worker(args.worker, cpu)
    if args.baseline is None or not (args.baseline / "slimify").is_dir():
        parser.error("--baseline must be a checkout with a slimify/ folder (git worktree add DIR COMMIT)")
    results = compare(args.baseline.resolve(), args.step, args.repeats, args.rounds, cpu)
    rows = []
    for lib, models in results.items():
        ratios = [new / old for old, new in models.values()]
        rows.append(f"| {lib} | {len(models)} | {statistics.median(o for o, _ in models.values()):.3f} | "
                    f"{statistics.median(n for _, n in models.values()):.3f} | **{statistics.median(ratios):.2f}** | "
                    f"{sum(r <= 1.0 for r in ratios)} |")
        print(rows[-1])
    if args.write:
        from benchmarks.results import machine, write_section
        commit = subprocess.run(["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip()
        write_section("Convert time against a baseline", "\n".join([
            f"Command: `python -m benchmarks.convert_time_compare --baseline <checkout of {commit}> --step {args.step} "
            f"--repeats {args.repeats} --rounds {args.rounds} --cpu {args.cpu}`  ",
            f"Machine: {machine()}. Per model the minimum CPU seconds of {args.repeats} conversions (x{args.rounds} "
            "rounds), one thread, the two checkouts by turns (module docstring).",
            "",
            "| library | models | baseline median s | now median s | median ratio now/baseline | models not slower |",
            "|---|---|---|---|---|---|",
            *rows,
        ]))


if __name__ == "__main__":
    main()
