"""Accuracy on Fashion-MNIST: one slimmable network against networks trained at each width alone,
the retrofit of a trained checkpoint through the CLI, and the slimmable-network paper's claims.

Rows (each at every width, test top-1, mean ± std over seeds):
  a individual    the plain architecture of each width, trained from scratch (the paper's baseline)
  b slimmable     all switches per step, switchable BN, in-place distillation, same recipe and epochs
  c retrofit      a's full-width network as the checkpoint: ``slimify convert`` (no reordering, or
                  reordered by BN |gamma|) and ``slimify finetune`` for 10/25/50 % of b's epochs
  d claims        shared BN; labels instead of distillation; incremental training; 8 switches;
                  zero-shot widths of the converted checkpoint (BN calibrated), with/without reordering
  e any width     sandwich training over [0.25, 1] + BN calibration at 0.3 … 0.9 vs a at those widths
  f search        ``search`` at 0.3x / 0.5x FLOPs vs the uniform width of equal FLOPs, both fine-tuned

Each cell (net, row, variant, seed) is cached in a JSONL file as soon as it ends, and a cell's training
keeps a checkpoint at every epoch's end (``<work>/runs/``, removed once the cell is cached), so a
stopped run resumes where it was, inside a cell too (rows a, b, d's variants and e; not incremental
training or search's short fine-tunes); ``--jobs n`` shares the cells among n processes (each claims one
at a time).

    python -m benchmarks.fashion --jobs 2             # the full table: an estimated 3 h on 2 idle cores
    python -m benchmarks.fashion --write              # tables + plot from the cache, into RESULTS.md
    python -m benchmarks.fashion --quick              # one seed, ResNet, small: under 15 minutes
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.fashion_cells import (
    ANY_WIDTHS,
    SWITCHES,
    SWITCHES8,
    Cell,
    Setting,
    budgets,
    done_with,
    holder_alive,
    macs,
    run_cell,
    run_dir,
)
from benchmarks.fashion_data import subset_directory
from benchmarks.results import machine, write_section

__all__ = ["SETTINGS", "append_entry", "cells", "load_cache", "main", "run_and_cache"]

HERE = Path(__file__).resolve().parent
HEADING = "Accuracy (Fashion-MNIST)"
SETTINGS: dict[str, Setting] = {
    # 9,600 training + 2,400 validation images, the whole test set; 20 epochs: an estimated 3 h on 2 idle cores (--jobs 2)
    "full": Setting("full", 12000, None, 20, 20, ("resnet", "mobilenet"), 2),
    "quick": Setting("quick", 3000, 2000, 4, 5, ("resnet",), 1),
    "smoke": Setting("smoke", 400, 200, 1, 2, ("resnet",), 1),  # the test suite's run of the plumbing
}


def cells(s: Setting) -> list[Cell]:
    """Every cell of a setting, the most telling first: rows a-c of every net and seed (the headline
    table), then the first net's other rows (one family complete), then the other nets' other rows."""
    def headline(net: str, seed: int) -> list[Cell]:
        out = [Cell("individual", f"{w:g}", net, seed) for w in reversed(SWITCHES)]
        out.append(Cell("slimmable", "distill", net, seed))
        out += [Cell("retrofit", f"{r}-{e}", net, seed) for e in budgets(s.epochs) for r in ("none", "bn")]
        return out + [Cell("retrofit", f"{r}-0", net, seed) for r in ("none", "bn", "l1")]

    def rest(net: str, seed: int) -> list[Cell]:
        out = [Cell("slimmable", v, net, seed) for v in ("labels", "shared-bn", "8-switches", "sandwich")]
        out.append(Cell("incremental", "joint-epochs", net, seed))
        out += [Cell("individual", f"{w:g}", net, seed) for w in ANY_WIDTHS]
        return out + [Cell("search", b, net, seed) for b in ("0.3x", "0.5x")]

    seeds = range(s.seeds)
    return ([c for net in s.nets for seed in seeds for c in headline(net, seed)]
            + [c for net in s.nets for seed in seeds for c in rest(net, seed)])


def load_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Finished cells by key (a line cut short by a kill is ignored)."""
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[entry["key"]] = entry
    return done


def append_entry(path: Path, entry: dict[str, Any]) -> None:
    """One line per cell, written with one O_APPEND write: workers never interleave lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


def _claim(claims: Path, cell: Cell) -> bool:
    """Take ``cell`` for this process unless a live process holds it (a killed run's claims lapse)."""
    path = claims / cell.key.replace("/", "_")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        if holder_alive(path):
            return False
        path.unlink(missing_ok=True)
        return _claim(claims, cell)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def run_and_cache(s: Setting, data_dir: Path, cell: Cell, work: Path, cache: Path, key: str, **fields: Any) -> None:
    """Run one cell and append its entry (under ``key``, with ``fields``) to ``cache``; its training
    checkpoints go once the entry is written. An entry marked ``resumed`` continued a stopped run's
    checkpoint: its ``seconds`` count only the part after the stop. The table and the trials both run
    their cells through here."""
    start, resumed = time.perf_counter(), run_dir(s, cell, work).exists()
    result = run_cell(s, data_dir, cell, work)
    seconds = time.perf_counter() - start
    append_entry(cache, {"key": key, "result": {str(k): v for k, v in result.items()}, "seconds": round(seconds, 1),
                         **fields, "machine": machine(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                         **({"resumed": True} if resumed else {})})
    done_with(s, cell, work)
    print(f"{key}: {seconds:.0f} s " + " ".join(f"{k}={v:.4g}" for k, v in result.items()), flush=True)


def run(s: Setting, cache: Path, work: Path) -> None:
    """Run every cell not yet in ``cache`` nor taken by another process (``--jobs`` runs several);
    a cell that fails is reported and left for the next run, the others go on."""
    from slimify.errors import SlimifyError

    data_dir = subset_directory(work / f"fashion-{s.train_images}-{s.test_images or 'all'}", s.train_images,
                                s.test_images)
    claims = work / f"claims-{s.name}"
    claims.mkdir(parents=True, exist_ok=True)
    failed: list[str] = []
    for cell in cells(s):
        if cell.key in load_cache(cache) or not _claim(claims, cell):
            continue
        try:
            run_and_cache(s, data_dir, cell, work, cache, cell.key, setting=s.name)
        except Exception as e:  # one broken cell must not stop the others: say which and go on
            print(f"{cell.key}: failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            failed.append(cell.key)
        (claims / cell.key.replace("/", "_")).unlink(missing_ok=True)
    if failed:
        raise SlimifyError(f"{len(failed)} cell(s) failed: {', '.join(failed)} (their errors are above; rerun to retry)")


def _spawn(jobs: int, argv: list[str]) -> int:
    """``jobs`` processes of this benchmark sharing the cells (each claims one at a time)."""
    import subprocess

    rest = [a for i, a in enumerate(argv) if not a.startswith("--jobs") and (i == 0 or argv[i - 1] != "--jobs")]
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.fashion", *rest, "--jobs", "1", "--no-report"])
             for _ in range(jobs)]
    return max(p.wait() for p in procs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, the ResNet, 3,000 images, 4 epochs")
    parser.add_argument("--setting", choices=sorted(SETTINGS), help="full (default), quick or smoke")
    parser.add_argument("--jobs", type=int, default=1, help="processes sharing the cells (each one torch thread)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process")
    parser.add_argument("--cache", type=Path, help="JSONL of finished cells (default: benchmarks/fashion-SETTING.jsonl)")
    parser.add_argument("--work", type=Path, default=HERE / "out" / "fashion", help="data subsets, checkpoints, runs")
    parser.add_argument("--write", action="store_true", help="only write the tables and the plot from the cache")
    parser.add_argument("--no-report", action="store_true", help="run cells only (the processes --jobs starts)")
    args = parser.parse_args(argv)
    s = SETTINGS[args.setting or ("quick" if args.quick else "full")]
    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    cache = args.cache or HERE / f"fashion-{s.name}.jsonl"
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1 and not args.write:
        _spawn(args.jobs, list(argv if argv is not None else sys.argv[1:]))
    elif not args.write:
        from slimify.errors import SlimifyError

        try:
            run(s, cache, args.work)
        except SlimifyError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.no_report:
        return 0
    from benchmarks.fashion_report import report

    command = "python -m benchmarks.fashion" + (f" --setting {s.name}" if s.name != "full" else "")
    costs = {net: macs(net, tuple(sorted({*SWITCHES, *SWITCHES8, *ANY_WIDTHS}))) for net in s.nets}
    body = report(s, cells(s), load_cache(cache), costs, command, machine(), cache.with_suffix(".png"))
    if s.name != "smoke":  # the test suite's setting never writes RESULTS.md
        write_section(HEADING if s.name == "full" else f"{HEADING}, {s.name} setting", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
