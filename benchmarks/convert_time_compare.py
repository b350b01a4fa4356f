"""Convert time of this checkout against a baseline checkout, or against Torch-Pruning, model by model, interleaved.

    git worktree add /tmp/baseline 6d6b825       # the code to compare with (any older commit)
    python -m benchmarks.convert_time_compare --baseline /tmp/baseline [--step 1] [--repeats 5] [--rounds 2] [--write]
    python -m benchmarks.convert_time_compare --peer torch-pruning [--models tv:resnet50 ...] [--repeats 3] [--write]

With ``--peer torch-pruning`` the second worker is Torch-Pruning (the ``bench`` extra): per model
the construction of a ``MagnitudePruner`` at ratio 0.5 with the classifier ignored, which builds its
``DependencyGraph`` (the tracing and dependency analysis TP needs before it can prune), on the same
model, the same example input, one thread, the same CPU; by default on the 26 models of
``TP_MODELS`` (torchvision and timm models Torch-Pruning handles).

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
from typing import Any

from benchmarks.bad_input import check_package, refuse

HERE = Path(__file__).resolve().parents[1]
JSONL = HERE / "benchmarks" / "coverage.jsonl"
PEERS = {"torch-pruning": "torch_pruning"}  # --peer → the module it needs
TP_MODELS = [  # issue 25: torchvision/timm models Torch-Pruning handles, the small depthwise ones included
    *(("torchvision", n) for n in (
        "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_large",
        "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s", "regnet_y_400mf", "regnet_y_1_6gf",
        "densenet121", "vgg11_bn", "googlenet", "convnext_tiny", "squeezenet1_0", "alexnet")),
    *(("timm", n) for n in (
        "regnety_002", "convnextv2_atto", "ghostnet_050", "hrnet_w18_small", "repvit_m1", "efficientnet_lite0",
        "resnet10t", "dla46x_c", "cspdarknet53")),
]


def _records() -> dict[tuple[str, str], dict]:
    records = {}
    for line in JSONL.read_text().splitlines():
        record = json.loads(line)
        records[(record["lib"], record["name"])] = record
    return records


def _classifier(model: Any) -> list[Any]:
    """The layer making the logits (Torch-Pruning must keep its outputs, as slimify does)."""
    import torch.nn as nn
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def tp_worker(cpu: int | None) -> None:
    """Like :func:`worker`, timing Torch-Pruning's pruner construction (its DependencyGraph build)."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    import copy
    import gc
    import warnings

    import torch
    import torch_pruning as tp

    from benchmarks.coverage_worker import build
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    records = _records()
    print("ready", flush=True)
    for line in sys.stdin:
        lib, name, repeats = line.split()
        base = build(lib, name).eval()  # TP traces autograd: parameters keep requires_grad
        x = torch.randn(1, *records[(lib, name)]["input"])
        seconds = []
        try:
            for _ in range(int(repeats)):
                model = copy.deepcopy(base)
                start = time.process_time()
                tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                          pruning_ratio=0.5, ignored_layers=_classifier(model))
                seconds.append(time.process_time() - start)
                del model
        except Exception as e:  # noqa: BLE001 - a model TP cannot handle: say so, go on
            print(f"nan {type(e).__name__}", flush=True)
            continue
        del base
        gc.collect()
        print(f"{min(seconds):.5f}", flush=True)


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


def _start(root: Path | str, cpu: int | None) -> subprocess.Popen:
    """A worker converting with the checkout under ``root``, or ``root`` = a peer's name (``PEERS``)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE))
    pin = [] if cpu is None else ["--cpu", str(cpu)]
    role = ["--peer-worker", str(root)] if str(root) in PEERS else ["--worker", str(root)]
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.convert_time_compare", *role, *pin],
                            cwd=HERE, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"the worker for {root} did not start")
    return proc


def _models(step: int) -> list[tuple[str, str]]:
    """Every ``step``-th model of the coverage lists that converted there."""
    from benchmarks.coverage import MODELS
    records = _records()
    return [(lib, name) for lib, names in json.loads(MODELS.read_text()).items() for name in names[::step]
            if records.get((lib, name), {}).get("input") and "convert_s" in records[(lib, name)]]


def compare(baseline: Path | str, models: list[tuple[str, str]], repeats: int, rounds: int,
            cpu: int | None) -> dict[str, dict[str, tuple[float, float]]]:
    """lib → model → (baseline seconds, new seconds); ``baseline``: a checkout or a peer's name."""
    workers = {"baseline": _start(baseline, cpu), "new": _start(HERE, cpu)}
    found: dict[str, dict[str, dict[str, float]]] = {}
    turn = 0
    for _ in range(rounds):
        for lib, name in models:
            turn += 1
            for which in (("baseline", "new") if turn % 2 else ("new", "baseline")):
                proc = workers[which]
                proc.stdin.write(f"{lib} {name} {repeats}\n")
                proc.stdin.flush()
                seconds = float(proc.stdout.readline().split()[0])
                slot = found.setdefault(lib, {}).setdefault(name, {})
                slot[which] = min(seconds, slot.get(which, float("inf")))
            print(lib, name, " ".join(f"{k} {v:.3f}" for k, v in found[lib][name].items()), flush=True)
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()
    return {lib: {n: (t["baseline"], t["new"]) for n, t in models.items()} for lib, models in found.items()}


def _parse_models(names: list[str]) -> list[tuple[str, str]]:
    """``tv:resnet50``/``torchvision:resnet50``/``timm:regnety_002``/``regnety_002`` (timm); an
    unknown one (not converted in the coverage run) ends the run with one line, exit status 2."""
    records = _records()
    models = []
    for text in names:
        lib, _, name = text.rpartition(":")
        lib = {"tv": "torchvision", "": "timm"}.get(lib, lib)
        if "convert_s" not in records.get((lib, name), {}):
            refuse("benchmarks.convert_time_compare",
                   f"unknown model {text!r}: not one the coverage run converted (benchmarks/coverage.jsonl)")
        models.append((lib, name))
    return models


def _peer_table(results: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    rows = [f"| {lib}:{name} | {new:.3f} | {old:.3f} | **{new / old:.2f}** |"
            for lib, models in results.items() for name, (old, new) in models.items() if old == old]
    ratios = [new / old for models in results.values() for old, new in models.values() if old == old]
    failed = [f"{lib}:{n}" for lib, models in results.items() for n, (old, _) in models.items() if old != old]
    summary = (f"Median ratio over {len(ratios)} models: **{statistics.median(ratios):.2f}**, highest "
               f"{max(ratios):.2f}, above 1.0: {sum(r > 1.0 for r in ratios)}"
               + (f"; Torch-Pruning failed on {', '.join(failed)}" if failed else "") + ".")
    return [summary, "", "| model | slimify.convert s | Torch-Pruning s | ratio |", "|---|---|---|---|", *rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code to compare with")
    parser.add_argument("--peer", choices=sorted(PEERS), help="compare with another tool instead of a checkout")
    parser.add_argument("--models", nargs="+", help="lib:name of the models (default: the coverage lists; "
                        "with --peer, TP_MODELS)")
    parser.add_argument("--step", type=int, default=1, help="every STEP-th model of each list")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1,
                        help="the one CPU both workers run on (default: the last; -1: not pinned)")
    parser.add_argument("--write", action="store_true", help="write the table to benchmarks/RESULTS.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--peer-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpu = None if args.cpu < 0 else args.cpu
    if args.worker:
        return worker(args.worker, cpu)
    if args.peer_worker:
        return tp_worker(cpu)
    if args.peer is None and (args.baseline is None or not (args.baseline / "slimify").is_dir()):
        parser.error("--baseline must be a checkout with a slimify/ folder (git worktree add DIR COMMIT), or give --peer")
    models = (_parse_models(args.models) if args.models else TP_MODELS if args.peer else _models(args.step))
    if args.peer is not None:  # after the models: an unknown model is named whether or not the peer is installed
        check_package("benchmarks.convert_time_compare", PEERS[args.peer], args.peer)
    results = compare(args.peer or args.baseline.resolve(), models, args.repeats, args.rounds, cpu)
    if args.peer:
        lines = _peer_table(results)
        print("\n".join(lines))
        if args.write:
            from benchmarks.results import machine, write_section
            write_section("Convert time against Torch-Pruning", "\n".join([
                f"Command: `python -m benchmarks.convert_time_compare --peer {args.peer} --repeats {args.repeats} "
                f"--rounds {args.rounds} --cpu {args.cpu}`{' (models as listed)' if args.models else ''}  ",
                f"Machine: {machine()}; load average {os.getloadavg()[0]:.1f} at the end. Per model the minimum CPU "
                f"seconds of {args.repeats} runs (x{args.rounds} rounds), one thread, both workers by turns on one CPU; "
                "ratio = slimify.convert / Torch-Pruning's MagnitudePruner construction (its DependencyGraph build).",
                "", *lines]))
        return
    rows = []
    for lib, found in results.items():
        ratios = [new / old for old, new in found.values()]
        rows.append(f"| {lib} | {len(found)} | {statistics.median(o for o, _ in found.values()):.3f} | "
                    f"{statistics.median(n for _, n in found.values()):.3f} | **{statistics.median(ratios):.2f}** | "
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
