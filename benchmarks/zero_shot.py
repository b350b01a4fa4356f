"""Zero-shot narrow switches of a normally trained network: how much does reordering channels by
importance help before any fine-tuning?

For each seed: train a plain CNN on the embedded digits data, then for each ordering (prefix =
no reordering, and every importance score) convert a copy, re-estimate each switch's BatchNorm
statistics on training batches, and measure top-1 on the validation split per switch.

    python -m benchmarks.zero_shot --seeds 3 --write
"""
from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import slimify
from benchmarks.results import machine, write_section
from slimify.train import calibrate_bn, digits, evaluate

__all__ = ["MODELS", "ORDERINGS", "train_plain", "zero_shot", "run", "main"]

HEADING = "Zero-shot widths after reordering"
SWITCHES = (0.25, 0.5, 0.75, 1.0)
ORDERINGS: tuple[str, ...] = ("prefix", "l1", "l2", "bn", "taylor")  # prefix = no reordering


def _digitsnet() -> nn.Module:
    from slimify.store.digits_net import DigitsNet

    return DigitsNet(channels=(32, 64, 128))


def _resnet10t() -> nn.Module:
    import timm

    return timm.create_model("resnet10t", pretrained=False, num_classes=10)


# model name → factory of the plain, randomly initialised network (10 classes, 3x32x32 input)
MODELS: dict[str, Callable[[], nn.Module]] = {"digitsnet": _digitsnet, "resnet10t": _resnet10t}


def train_plain(model: nn.Module, epochs: int, seed: int, lr: float = 0.05, weight_decay: float = 5e-4,
                batch_size: int = 64) -> nn.Module:
    """Ordinary training (SGD, momentum, cosine schedule, weight decay) on augmented digits."""
    torch.manual_seed(seed)
    data = digits("train")
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    steps = epochs * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            loss = F.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def zero_shot(trained: nn.Module, ordering: str, calibrate_batches: int, taylor_batches: int,
              seed: int) -> dict[float, float]:
    """Top-1 per switch of a converted copy of ``trained`` (BN re-estimated, no fine-tuning)."""
    model = copy.deepcopy(trained).eval()
    example = torch.randn(1, 3, 32, 32)
    data = None
    if ordering == "taylor":
        loader = torch.utils.data.DataLoader(digits("train", augment=False), batch_size=64, shuffle=True,
                                             generator=torch.Generator().manual_seed(seed))
        data = [batch for _, batch in zip(range(taylor_batches), loader)]
    slimify.convert(model, SWITCHES, example_input=example, reorder=None if ordering == "prefix" else ordering,
                    reorder_data=data)
    calibrate_bn(model, digits("train", augment=False), batches=calibrate_batches, batch_size=64, seed=seed)
    return evaluate(model, digits("val")).top1()


def run(models: list[str], seeds: int, epochs: int, calibrate_batches: int,
        taylor_batches: int) -> dict[str, dict[str, list[dict[float, float]]]]:
    """results[model][ordering] = one {switch: top-1} per seed."""
    results: dict[str, dict[str, list[dict[float, float]]]] = {}
    for name in models:
        results[name] = {o: [] for o in ORDERINGS}
        for seed in range(seeds):
            start = time.perf_counter()
            torch.manual_seed(seed)
            trained = train_plain(MODELS[name](), epochs, seed)
            plain = evaluate(trained, digits("val")).top1()[1.0]
            for ordering in ORDERINGS:
                results[name][ordering].append(zero_shot(trained, ordering, calibrate_batches, taylor_batches, seed))
            row = "  ".join(f"{o} {results[name][o][-1][0.25]:.1f}/{results[name][o][-1][0.5]:.1f}"
                            for o in ORDERINGS)
            print(f"{name} seed {seed}: plain {plain:.2f}; w=0.25/0.5 top-1: {row} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return results


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {std:.1f}"


def table(results: dict[str, dict[str, list[dict[float, float]]]]) -> str:
    head = "| model | ordering | " + " | ".join(f"w={w:g}" for w in SWITCHES) + " |"
    lines = [head, "|---|---|" + "---:|" * len(SWITCHES)]
    for name, per in results.items():
        for ordering, runs in per.items():
            cells = " | ".join(_cell([r[w] for r in runs]) for w in SWITCHES)
            lines.append(f"| {name} | {ordering} | {cells} |")
    return "\n".join(lines)


def reading(results: dict[str, dict[str, list[dict[float, float]]]]) -> str:
    """Per model and narrow switch: which orderings beat the prefix on the mean (and by how much)."""
    lines = []
    for name, per in results.items():
        for w in (0.25, 0.5):
            base = statistics.fmean(r[w] for r in per["prefix"])
            gains = {o: statistics.fmean(r[w] for r in runs) - base for o, runs in per.items() if o != "prefix"}
            best = max(gains, key=gains.__getitem__)
            won = ", ".join(f"{o} {g:+.1f}" for o, g in gains.items())
            lines.append(f"- {name}, w={w:g}: vs prefix {won} (points; best: {best})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15, help="plain training epochs")
    parser.add_argument("--calibrate-batches", type=int, default=20, help="BN re-estimation batches per switch")
    parser.add_argument("--taylor-batches", type=int, default=8)
    parser.add_argument("--write", action="store_true", help=f"write '## {HEADING}' of benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown or args.seeds < 1:
        parser.error(f"unknown models {unknown} (choose from {list(MODELS)})" if unknown else "--seeds must be >= 1")
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    start = time.perf_counter()
    results = run(models, args.seeds, args.epochs, args.calibrate_batches, args.taylor_batches)
    minutes = (time.perf_counter() - start) / 60
    text = table(results) + "\n\n" + reading(results)
    print(text)
    if args.write:
        command = "python -m benchmarks.zero_shot " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section(HEADING, _section(text, command, args, minutes))


def _section(text: str, command: str, args: argparse.Namespace, minutes: float) -> str:
    return f"""\
Top-1 (%) on the digits validation split (360 images) of a **normally trained** network, converted
and run at each switch **without fine-tuning**: only each switch's BatchNorm statistics are
re-estimated ({args.calibrate_batches} training batches of 64 per switch). `prefix` keeps the first
channels as trained; the others reorder each channel group by an importance score first
(`slimify.convert(..., reorder=...)`; taylor sums over {args.taylor_batches} training batches).
Mean ± std over {args.seeds} seeds (each seed trains its own network: {args.epochs} epochs of SGD
with weight decay 5e-4). Width 1.0 is the same network for every ordering (reordering keeps the
function). digitsnet is a VGG-style CNN with 32/64/128 channels, resnet10t timm's ResNet-10-T.

{text}

Command: `{command}` ({minutes:.0f} min wall; other jobs shared the machine)
Machine: {machine()}
"""


if __name__ == "__main__":
    main()
