"""Trials beside the Fashion-MNIST table: runs that explain a missed goal, not cells of the table.

``budget``: the individual network of a width trained from scratch with the retrofit's epoch budget
instead of the table's. It answers whether a retrofitted switch kept anything of the checkpoint:
a retrofit no better than this control relearned the width from nothing.

``retrofit``: the table's retrofit row (``slimify convert`` + ``finetune`` through the CLI) with an
importance score the table does not fine-tune from (``--reorder l1``): L1 is the better zero-shot order
on the ResNet, BN |gamma| the one the table fine-tunes.

``anywidth``: row e's sandwich training (widths drawn from [0.25, 1], BN calibrated per width) with
every narrow width learning from the labels instead of the full width's predictions (row d found
labels better than in-place distillation at fixed switches); compare with row e and row a.

    python -m benchmarks.fashion_trials budget --net mobilenet --widths 0.25 0.5 --epochs 5 --seeds 0 1
    python -m benchmarks.fashion_trials retrofit --net resnet --reorder l1 --epochs 5 --seeds 0 1
    python -m benchmarks.fashion_trials anywidth --net resnet --seeds 0 1

Results are cached per trial in ``benchmarks/fashion-trials.jsonl`` (a stopped run resumes); the
data subset and setting are the full table's (``benchmarks.fashion``), so the numbers compare.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from benchmarks.fashion import HERE, SETTINGS, load_cache, run_and_cache
from benchmarks.fashion_cells import NETS, Cell
from benchmarks.fashion_data import subset_directory

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trial", choices=["budget", "retrofit", "anywidth"])
    parser.add_argument("--net", default="mobilenet", help=f"one of {', '.join(sorted(NETS))}")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--epochs", type=int, default=5, help="budget: from-scratch epochs; retrofit: fine-tuning "
                        "epochs (the table's 25 %% budget: 5); anywidth: ignored (the table's epochs)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--reorder", default="l1", help="retrofit: the importance score convert reorders by")
    parser.add_argument("--cache", type=Path, default=HERE / "fashion-trials.jsonl")
    parser.add_argument("--work", type=Path, default=HERE / "out" / "fashion")
    args = parser.parse_args(argv)
    if args.net not in NETS:
        print(f"error: unknown --net {args.net!r}; known: {', '.join(sorted(NETS))}", file=sys.stderr)
        return 2
    import slimify

    reorders = ["none", *slimify.SCORES.names(lambda e: not e.options.get("needs_data"))]
    if args.reorder not in reorders:
        print(f"error: unknown --reorder {args.reorder!r}; known: {', '.join(reorders)}", file=sys.stderr)
        return 2
    if args.epochs < 1 or not all(0 < w < 1 for w in args.widths):  # width 1 would overwrite the table's checkpoint
        print("error: --epochs must be at least 1 and every width in (0, 1)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    full = SETTINGS["full"]
    s = dataclasses.replace(full, name=f"full-{args.epochs}ep", epochs=args.epochs)
    data_dir = subset_directory(args.work / f"fashion-{full.train_images}-{full.test_images or 'all'}",
                                full.train_images, full.test_images)
    for seed in args.seeds:
        if args.trial == "budget":
            todo = [(Cell("individual", f"{w:g}", args.net, seed), f"budget/{args.epochs}ep/") for w in args.widths]
        elif args.trial == "anywidth":  # row e's cell with labels for the narrow widths
            todo = [(Cell("slimmable", "sandwich-labels", args.net, seed), "trial/")]
        else:  # the retrofit row's own cell, at a reorder/epochs pair the table does not run
            todo = [(Cell("retrofit", f"{args.reorder}-{args.epochs}", args.net, seed), "trial/")]
        for cell, prefix in todo:
            key = prefix + cell.key
            if key in load_cache(args.cache):
                continue
            run_and_cache(s if args.trial == "budget" else full, data_dir, cell, args.work, args.cache, key)
    for key, entry in sorted(load_cache(args.cache).items()):
        print(key, entry["result"], f"{entry['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
