"""Coverage benchmark: does every model of the benchmark list convert with ``convert``'s default
arguments, stay exact at full width, run at every switch and really slim? One subprocess per
model, results as JSONL (resumable), a summary in the ``## Coverage`` section of
benchmarks/RESULTS.md.

    python -m benchmarks.coverage --jobs 2                  # the whole list (~10-25 min on 2 cores)
    python -m benchmarks.coverage --only 'vit*' --rerun     # some models again
    python -m benchmarks.coverage --summary-only            # rewrite RESULTS.md from the JSONL
    python -m benchmarks.coverage --ladder --out old.jsonl  # the old protocol: divisor 8, then 4/2/1
    python -m benchmarks.coverage --compare old.jsonl       # models whose results differ from old.jsonl
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import timm  # noqa: F401 - imported once here, inherited by every forked worker
import torch
import torchvision  # noqa: F401

import slimify.analysis.stages  # noqa: F401
from benchmarks.coverage_worker import measure, measure_ladder
from benchmarks.results import machine, write_section
from slimify.analysis.plan import AUTO_TOLERANCE

__all__ = ["EXPLAINED", "load_results", "select", "run_all", "summary", "compare", "main"]

HERE = Path(__file__).resolve().parent
MODELS = Path("/work/shared/models/benchmark_models.json")
JSONL = HERE / "coverage.jsonl"
RESULTS = HERE / "RESULTS.md"  # the ``## Coverage`` section only
HEADING = "Coverage"
# other tools on the same list (shared/models/README.md): models that convert at width 0.5 with
# MACs ≤ 0.35, out of the models each tool handled; median dependency-graph build time, 1 thread
REFERENCE: dict[str, dict[str, str]] = {
    "Torch-Pruning 1.6.0": {"torchvision": "64/80", "timm": "57/148", "median_s_torchvision": "0.27",
                            "median_s_timm": "0.13"},
    "ModelOpt 0.47 FastNAS": {"torchvision": "25/80", "timm": "11/147"},
}


# model → why it stays uncovered (shown next to what was measured)
EXPLAINED: dict[str, str] = {
    "mobilenetv3_small_050": "the 3-channel stem conv (22% of the MACs at 224 px), the classifier (4%) and the depthwise "
                             "convs (~20%) scale linearly with width: every group at exactly half keeps 0.362 (measured at "
                             "divisor 1), so uniform width 0.5 cannot reach 0.35 (test_zoo's bound is 0.37); a searched per-layer "
                             "configuration does (`slimify search --flops 0.35x`: 0.331 at 224², *Searched configuration "
                             "of mobilenetv3_small_050* below)",
}


def load_results(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """(lib, name) → the latest record of that model in the JSONL."""
    results: dict[tuple[str, str], dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                results[(r["lib"], r["name"])] = r
    return results


def select(models: dict[str, list[str]], only: str | None) -> list[tuple[str, str]]:
    """Every (lib, name), filtered by comma-separated globs (or plain substrings) on ``name``
    or ``lib:name``."""
    patterns = [p if any(c in p for c in "*?[") else f"*{p}*" for p in (only or "*").split(",") if p]
    return [(lib, name) for lib, names in models.items() for name in names
            if any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(f"{lib}:{name}", p) for p in patterns)]


def _child(conn: Connection, measure_fn: Callable[..., dict[str, Any]], lib: str, name: str, export: bool) -> None:
    conn.send(measure_fn(lib, name, export))
    conn.close()


def run_all(todo: list[tuple[str, str]], jobs: int, timeout: float | Callable[[str, str], float], export: bool,
            on_result: Callable[[dict[str, Any]], None],
            measure_fn: Callable[..., dict[str, Any]] = measure) -> None:
    """Run each model in its own forked process, ``jobs`` at a time. The parent imports torch,
    torchvision, timm and slimify once, so a child starts in milliseconds; a child that hangs
    past ``timeout`` (seconds, or a function of lib and name) is killed, one that crashes becomes a
    failed record. ``measure_fn(lib, name, export)`` measures one model (the foreign benchmark's own)."""
    limit = timeout if callable(timeout) else (lambda lib, name: timeout)
    fork = multiprocessing.get_context("fork")
    pending, running = list(todo), {}
    while pending or running:
        while pending and len(running) < jobs:
            lib, name = pending.pop(0)
            recv, send = fork.Pipe(duplex=False)
            proc = fork.Process(target=_child, args=(send, measure_fn, lib, name, export), daemon=True)
            proc.start()
            send.close()
            running[recv] = (proc, lib, name, time.perf_counter())
        for conn in wait(list(running), timeout=1.0):
            proc, lib, name, start = running.pop(conn)
            try:
                record = conn.recv()
            except EOFError:
                proc.join()
                record = {"lib": lib, "name": name, "covered": False, "stage": "crash",
                          "why": f"worker died with exit code {proc.exitcode}"}
            proc.join()
            on_result({**record, "wall_s": time.perf_counter() - start})
        now = time.perf_counter()
        for conn, (proc, lib, name, start) in list(running.items()):
            if now - start > limit(lib, name):
                proc.kill()
                proc.join()
                del running[conn]
                on_result({"lib": lib, "name": name, "covered": False, "stage": "timeout",
                           "why": f"timeout after {limit(lib, name):.0f} s", "wall_s": now - start})


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def _count(rows: list[dict[str, Any]], key: str, test: Any = bool) -> int:
    return sum(1 for r in rows if key in r and test(r[key]))


def summary(results: dict[tuple[str, str], dict[str, Any]], models: dict[str, list[str]]) -> str:
    """The markdown of the ``## Coverage`` section."""
    ladder = any(r.get("divisor") is not None for r in results.values())
    protocol = ("switches (0.25, 0.5, 0.75, 1.0), divisor 8, then 4, 2, 1 for a model that misses the MAC bound "
                "with no group fixed (`--ladder`)" if ladder else
                "`convert`'s default arguments only (switches (0.25, 0.5, 0.75, 1.0), `divisor=None`: 8, or the "
                f"largest smaller power of two that keeps a narrow group's switches within {AUTO_TOLERANCE:.0%} of C·w)")
    command = "python -m benchmarks.coverage --jobs 2" + (" --ladder" if ladder else "")
    out = [f"Every model of `shared/models/benchmark_models.json`, random init, batch 1, the model's own "
           f"input size capped at 224 (fixed sizes kept), {protocol}, "
           f"1 thread per model ({machine()}; `{command}`). A model is **covered** when it converts, width 1.0 "
           f"equals the original (max |Δ| ≤ 1e-5·max |y|), every switch runs with the original output "
           f"shape, width 0.5 keeps ≤ 0.35 of the MACs (torch.utils.flop_counter) and, where "
           f"`slimify.export` exists, the exported width-0.5 model equals the slimmable one (≤ 1e-4).", "",
           "| library | models run | converts | full width exact | switches run | MACs ≤ 0.35 | covered "
           "| median convert s | Torch-Pruning 1.6.0 | ModelOpt 0.47 FastNAS |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for lib, names in models.items():
        rows = [results[(lib, n)] for n in names if (lib, n) in results]
        ref_tp, ref_mo = REFERENCE["Torch-Pruning 1.6.0"], REFERENCE["ModelOpt 0.47 FastNAS"]
        out.append(f"| {lib} | {len(rows)}/{len(names)} | {_count(rows, 'convert_s', lambda v: True)} "
                   f"| {_count(rows, 'full_ok')} | {_count(rows, 'switches_ok')} "
                   f"| {_count(rows, 'mac_ratio', lambda v: v <= 0.35)} | **{_count(rows, 'covered')}** "
                   f"| {_median([r['convert_s'] for r in rows if 'convert_s' in r])} "
                   f"(TP {ref_tp[f'median_s_{lib}']}) | {ref_tp[lib]} | {ref_mo[lib]} |")
    loads = [r["load"] for r in results.values() if "load" in r]
    narrow = sorted(f"`{r['name']}` ({r['divisor']})" for r in results.values() if r.get("divisor") not in (8, None))
    below = [r for r in results.values() if r.get("divisor") is None and _below_8(r)]
    groups_below = sum(sum(n for d, n in r["group_divisors"].items() if int(d) < 8) for r in below)
    padded = sorted(f"`{r['name']}`" + ("" if r.get("num_classes") == 0 else f" (num_classes={r.get('num_classes')}!)")
                    for r in results.values() if r.get("padded_output"))
    out += ["", "Torch-Pruning's and ModelOpt's figures count models whose 50% uniform pruning reaches "
                "MACs ≤ 0.35; Torch-Pruning's time is its DependencyGraph build. Convert times are wall "
                f"seconds on one thread of a shared machine (median load average {_median(loads)} on "
                f"{os.cpu_count()} cores during the sweep): compare them with care.", "",
            ("Divisor 8 throughout, except models whose layers are too narrow to halve in steps of 8 (width "
             "0.5 missed the MAC bound with no group fixed); they count at the divisor in brackets: "
             + (", ".join(narrow) if narrow else "none") + "." if ladder else
             f"The automatic divisor gave {groups_below} groups of {len(below)} models a divisor below 8 (each "
             "model's smallest is in the table's divisor column; `divisor=None` picks, per group, the largest "
             f"power of two ≤ 8 that keeps every switch within {AUTO_TOLERANCE:.0%} of C·w)."), "",
            "Models whose output is padded back to full size at narrow widths (they return features, "
            "`docs/design.md`, *Model outputs*): " + (", ".join(padded) if padded else "none") + ".", ""]
    out += _sweep_time(results, models) + _failures(results, models) + [""] + _per_model(results, models) + [""]
    return "\n".join(out)


def _below_8(r: dict[str, Any]) -> bool:
    """Some group of this record used a divisor below 8."""
    return any(int(d) < 8 for d in r.get("group_divisors") or {})


def _sweep_time(results: dict[tuple[str, str], dict[str, Any]], models: dict[str, list[str]]) -> list[str]:
    """How long the sweep took, when one run measured every model."""
    runs = {results[(lib, n)].get("run") for lib, names in models.items() for n in names if (lib, n) in results}
    if len(runs) != 1 or None in runs:
        return []
    rows = list(results.values())
    start = int(next(iter(runs)).split()[0])
    minutes = (max(r["finished"] for r in rows if "finished" in r) - start) / 60
    return [f"The sweep (`{next(iter(runs)).split()[1]}`, {sum(len(v) for v in models.values())} models, one "
            f"subprocess each) took {minutes:.1f} min wall on this machine.", ""]


def _failures(results: dict[tuple[str, str], dict[str, Any]], models: dict[str, list[str]]) -> list[str]:
    rows = [results[(lib, n)] for lib, names in models.items() for n in names
            if (lib, n) in results and not results[(lib, n)]["covered"]]
    out = ["### Remaining failures", ""]
    if not rows:
        return out + ["None."]
    for r in rows:
        why = EXPLAINED.get(r["name"])
        out.append(f"- {r['lib']} `{r['name']}`: {r.get('why', '')}" + (f". **Why:** {why}" if why else ""))
    return out


def row_cells(r: dict[str, Any]) -> tuple[str, str, str, str]:
    """Main fixed reason, full-width error, MAC ratio and convert seconds of one record, as table cells."""
    reasons = r.get("fixed_reasons") or []
    reason = reasons[0][0][:110].replace("|", "/") if reasons else ""
    err = f"{r['full_rel_err']:.1e}" if "full_rel_err" in r else "-"
    mac = f"{r['mac_ratio']:.3f}" if "mac_ratio" in r else "-"
    conv = f"{r['convert_s']:.2f}" if "convert_s" in r else "-"
    return reason, err, mac, conv


def _per_model(results: dict[tuple[str, str], dict[str, Any]], models: dict[str, list[str]]) -> list[str]:
    out = ["### Per model", "", "<details><summary>all models</summary>", "",
           "| library | model | input | covered | full-width rel. err | MACs at 0.5 | divisor | convert s | groups "
           "| fixed | main fixed reason |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for lib, names in models.items():
        for n in names:
            r = results.get((lib, n))
            if r is None:
                continue
            reason, err, mac, conv = row_cells(r)
            size = "×".join(str(s) for s in r.get("input", [])[1:]) or "-"
            divisor = r.get("divisor", "-")
            if divisor is None:  # automatic: the smallest a group used
                divisor = "auto" + (f" ({min(map(int, r['group_divisors']))})" if r.get("group_divisors") else "")
            out.append(f"| {lib} | {n} | {size} | {'yes' if r['covered'] else 'no'} | {err} | {mac} "
                       f"| {divisor} | {conv} "
                       f"| {r.get('groups', '-')} | {r.get('fixed_groups', '-')} | {reason} |")
    return out + ["", "</details>"]


def compare(old: dict[tuple[str, str], dict[str, Any]], new: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """One line per model whose covered flag, group or fixed-group count, or width-0.5 MACs (by more
    than 0.02) differ between two sweeps (``--compare OLD.jsonl``)."""
    lines = []
    for key in sorted(old.keys() & new.keys()):
        a, b = old[key], new[key]
        diffs = [f"{field} {a.get(field)} → {b.get(field)}" for field in ("covered", "groups", "fixed_groups")
                 if a.get(field) != b.get(field)]
        if abs(a.get("mac_ratio", 1.0) - b.get("mac_ratio", 1.0)) > 0.02:
            diffs.append(f"MACs at 0.5 {a.get('mac_ratio', float('nan')):.3f} → {b.get('mac_ratio', float('nan')):.3f}")
        if diffs:
            lines.append(f"{key[0]}:{key[1]}: " + "; ".join(diffs))
    return lines


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:  # one short line per write: a crash loses at most this model
        f.write(json.dumps(record) + "\n")


def add_sweep_arguments(parser: argparse.ArgumentParser, out: Path, results: Path, jobs: int) -> None:
    """The options every sweep shares (this one and ``benchmarks.foreign``)."""
    parser.add_argument("--out", type=Path, default=out, help="JSONL results (resumed from)")
    parser.add_argument("--results", type=Path, default=results, help="markdown file to update")
    parser.add_argument("--jobs", type=int, default=jobs, help="models run at the same time")
    parser.add_argument("--only", default=None, help="glob or substring on the model name")
    parser.add_argument("--rerun", action="store_true", help="run models already in the JSONL again")
    parser.add_argument("--summary-only", action="store_true", help="only rewrite the summary")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")


def recorder(results: dict[tuple[str, str], dict[str, Any]], out: Path, total: int,
             **extra: Any) -> Callable[[dict[str, Any]], None]:
    """What a sweep does with each finished model: keep it, append it to the JSONL, print one line."""
    done = [0]

    def record(r: dict[str, Any]) -> None:
        r = {**r, **extra, "finished": time.time()}
        results[(r["lib"], r["name"])] = r
        _append(out, r)
        done[0] += 1
        print(f"[{done[0]}/{total}] {'ok' if r['covered'] else 'NO'} {r['lib']}:{r['name']} "
              f"{r.get('wall_s', 0):.0f}s mac={r.get('mac_ratio', float('nan')):.3f} {r.get('why', '')}", flush=True)

    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=MODELS, help="JSON: {library: [model names]}")
    add_sweep_arguments(parser, JSONL, RESULTS, jobs=2)
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per model")
    parser.add_argument("--skip-export", action="store_true", help="do not check slimify.export")
    parser.add_argument("--compare", type=Path, default=None,
                        help="JSONL of an earlier sweep: print the models whose results differ, then stop")
    parser.add_argument("--ladder", action="store_true",
                        help="the old protocol: divisor 8, then 4/2/1 for a model that misses the MAC bound")
    args = parser.parse_args(argv)
    models: dict[str, list[str]] = json.loads(args.models.read_text())
    results = load_results(args.out)
    if args.compare is not None:
        print("\n".join(compare(load_results(args.compare), results)) or "no model differs")
        return 0
    todo = [] if args.summary_only else [m for m in select(models, args.only) if args.rerun or m not in results]
    torch.set_num_threads(1)
    run = f"{time.time():.0f} jobs={max(1, args.jobs)}"  # one sweep: its records give its duration
    record = recorder(results, args.out, len(todo), run=run)
    run_all(todo, max(1, args.jobs), args.timeout, not args.skip_export, record,
            measure_ladder if args.ladder else measure)
    if not args.no_write:
        write_section(HEADING, summary(results, models), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
