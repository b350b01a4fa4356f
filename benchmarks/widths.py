"""Widths beyond the switches on the embedded digits data (issue 14): any uniform width after
sandwich vs fixed-switch training, with and without BN calibration; searched vs uniform
configurations at equal FLOPs after the same fine-tuning; searched configurations of the timm
models whose uniform 0.5 misses 0.35 of the MACs (mobilenetv3_small_050, edgenext_xx_small).

    python -m benchmarks.widths anywidth --seeds 1 --epochs 8 --write
    python -m benchmarks.widths search --seeds 3 --epochs 8 --ft-epochs 2 --write
    python -m benchmarks.widths bound --epochs 3 --write
"""
from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.data import Subset

import slimify
from benchmarks.results import machine, write_section
from slimify.deploy.extract import export
from slimify.selection.config_search import parse_budget, search
from slimify.store.digits_net import DigitsNet
from slimify.train import calibrate_bn, digits, evaluate, finetune
from slimify.train.loader import as_batches

__all__ = ["train_digitsnet", "any_width", "search_vs_uniform", "bound_search", "main"]

SWITCHES = (0.25, 0.5, 0.75, 1.0)
WIDTHS = tuple(round(0.25 + 0.05 * k, 2) for k in range(16))  # 0.25 … 1.0
# the from-scratch recipe both arms share: in-place distillation, no calibration inside the run
RECIPE: dict[str, object] = dict(lr=0.1, schedule="cosine", warmup_epochs=0.3, narrow_loss="distill",
                                 calibrate_batches=0, eval_every=0, workers=0)
HELD_OUT = 256  # last training images (no augmentation) that search scores on; val stays for the result
Log = Callable[[str], None]


def _quiet() -> warnings.catch_warnings:
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore")  # uncalibrated widths say once what they borrow: known here
    return ctx


def train_digitsnet(arm: str, seed: int, epochs: int) -> nn.Module:
    """DigitsNet converted to SWITCHES and trained from scratch: all switches per step ("fixed") or
    the sandwich rule over [0.25, 1] with two random widths ("sandwich": the same 4 passes a step)."""
    torch.manual_seed(seed)
    model = slimify.convert(DigitsNet(), SWITCHES, 4, torch.randn(1, 3, 32, 32))
    extra = dict(width_range=[0.25, 1.0], sandwich=2) if arm == "sandwich" else {}
    finetune(model, digits("train"), "demo", epochs=epochs, seed=seed, progress=False, **RECIPE, **extra)
    return model.eval()


def _calibrated(model: nn.Module, widths: tuple) -> nn.Module:
    calibrated = copy.deepcopy(model)
    calibrate_bn(calibrated, digits("train", augment=False), batches=10, widths=list(widths), batch_size=64)
    return calibrated


def any_width(seeds: int, epochs: int, log: Log) -> dict[str, dict[float, list[float]]]:
    """Top-1 per width for each (training, calibration) arm, one list entry per seed."""
    val, out = digits("val"), {}
    for seed in range(seeds):
        for arm in ("fixed", "sandwich"):
            start = time.perf_counter()
            model = train_digitsnet(arm, seed, epochs)
            ctx = _quiet()
            plain = evaluate(model, val, widths=list(WIDTHS)).top1()
            calib = evaluate(_calibrated(model, WIDTHS), val, widths=list(WIDTHS)).top1()
            ctx.__exit__(None, None, None)
            for name, row in ((f"{arm}", plain), (f"{arm} + BN calibration", calib)):
                for w, v in row.items():
                    out.setdefault(name, {}).setdefault(w, []).append(v)
            log(f"seed {seed} {arm}: {time.perf_counter() - start:.0f} s; calibrated "
                + " ".join(f"{calib[w]:.0f}" for w in WIDTHS))
    return out


def _held_out() -> list:
    train = digits("train", augment=False)
    return list(as_batches(Subset(train, range(len(train) - HELD_OUT, len(train))), 128))


def _flops(model: nn.Module, value: object) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    plain = export(model, value).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        plain(torch.randn(1, 3, 32, 32))
    return float(counter.get_total_flops())


def _equal_flops_uniform(model: nn.Module, flops: float) -> float:
    """The widest uniform width (0.01 steps) whose FLOPs do not exceed ``flops``."""
    fits = [w / 100 for w in range(25, 101) if _flops(model, w / 100) <= flops]
    return max(fits) if fits else 0.25


def _finetuned_top1(model: nn.Module, value: object, epochs: int, seed: int) -> tuple[float, float]:
    """(top-1 with calibrated BN before, top-1 after fine-tuning) of ``value`` as a plain model."""
    ctx = _quiet()
    calibrated = _calibrated(model, (value,))
    before = evaluate(export(calibrated, value), digits("val")).rows[0].top1
    ctx.__exit__(None, None, None)
    torch.manual_seed(seed)
    plain = export(calibrated, value).train()
    finetune(plain, digits("train"), "demo", epochs=epochs, lr=0.02, seed=seed, progress=False, calibrate_batches=10,
             eval_every=0, workers=0)
    return before, evaluate(plain, digits("val")).rows[0].top1


def search_vs_uniform(seeds: int, epochs: int, ft_epochs: int, budgets: tuple[str, ...], log: Log,
                      latency_seeds: int = 1) -> dict:
    rows: dict = {}
    for seed in range(seeds):
        model = train_digitsnet("sandwich", seed, epochs)
        held = _held_out()
        for text in budgets:
            result = search(model, held, parse_budget("flops", text))
            flops = _flops(model, result.name)
            w = _equal_flops_uniform(model, flops)
            searched = _finetuned_top1(model, result.name, ft_epochs, seed)
            uniform = _finetuned_top1(model, w, ft_epochs, seed)
            row = rows.setdefault(text, {"searched": [], "uniform": [], "seconds": [], "flops": [], "uflops": [],
                                         "w": [], "before": [], "ubefore": []})
            for key, value in (("searched", searched[1]), ("uniform", uniform[1]), ("before", searched[0]),
                               ("ubefore", uniform[0]), ("seconds", result.seconds), ("flops", flops),
                               ("uflops", _flops(model, w)), ("w", w)):
                row[key].append(value)
            log(f"seed {seed} {text}: searched {searched} vs uniform w={w} {uniform}; {result.seconds:.0f} s")
        if seed >= latency_seeds:
            continue
        latency = search(model, held, parse_budget("latency", "0.7x"), latency_runs=20)
        rows.setdefault("latency", []).append((latency.limit, latency.chosen.cost, latency.measured_ms,
                                               latency.seconds))
        log(f"seed {seed} latency: budget {latency.limit:.3f} ms, table {latency.chosen.cost:.3f}, "
            f"measured {latency.measured_ms:.3f}")
    return rows


def bound_search(name: str, divisor: int, epochs: int, log: Log, size: int = 32, fraction: float = 0.1,
                 cost_size: int = 224) -> dict:
    """timm model ``name`` (random init, 10 classes, digits at ``size``²): sandwich-trained briefly,
    then a FLOPs search at 0.35x scoring candidates at ``size``² and counting FLOPs at
    ``cost_size``² (where the bound is stated); MACs of the exported configuration at ``size``² and
    224² vs uniform 0.5."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    slimify.convert(model, SWITCHES, divisor, torch.randn(1, 3, cost_size, cost_size))
    train = digits("train", size=size)
    start = time.perf_counter()
    finetune(model, train, "demo", epochs=epochs, progress=False, width_range=[0.25, 1.0], sandwich=2,
             **{**RECIPE, "lr": 0.05})
    trained = time.perf_counter() - start
    held = list(itertools.islice(as_batches(Subset(digits("train", size=size, augment=False), range(1373, 1437)), 64), 1))
    result = search(model.eval(), held, parse_budget("flops", "0.35x"), fraction=fraction, progress=log,
                    cost_input=torch.randn(1, 3, cost_size, cost_size))

    def macs(value: object, side: int) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export(model, value).eval()(torch.randn(1, 3, side, side))
        return counter.get_total_flops() / 2

    out = {"model": name, "divisor": divisor, "train_s": trained, "search_s": result.seconds,
           "moves": len(result.path), "name": result.name, "top1_full": result.full.top1,
           "top1_searched": result.chosen.top1, "size": size, "fraction": fraction, "cost_size": cost_size,
           "uniform": {f"{p.width:g}": p.top1 for p in result.uniform}}
    for side, key in ((size, "small"), (224, "224")):
        full = macs(1.0, side)
        out[f"searched_{key}"] = macs(result.name, side) / full
        out[f"uniform_{key}"] = macs(0.5, side) / full
    log(str(out))
    return out


def _mean(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def _header(command: str, seconds: float) -> list[str]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return [f"Command: `{command}`  ", f"Machine: {machine()}; {seconds:.0f} s in total, shared machine under load "
            f"(load average at the end {load:.1f}): times depend on it, accuracies do not.", ""]


def any_width_markdown(results: dict, command: str, seconds: float, seeds: int, epochs: int) -> str:
    lines = _header(command, seconds) + [
        f"Top-1 % on the digits validation split (360 images), mean ± std over {seeds} seed(s); DigitsNet "
        f"converted to switches {list(SWITCHES)} (divisor 4), trained from scratch {epochs} epochs with in-place "
        "distillation. *fixed*: all four switches every step; *sandwich*: widths 1.0, 0.25 and two random widths "
        "in [0.25, 1] every step (the same four passes). Without calibration a width that is no switch borrows the "
        "BN statistics of the nearest wider switch; *+ BN calibration*: every width's statistics re-estimated on "
        "10 training batches of 64.", "", "| width | " + " | ".join(results) + " |", "|---:|" + "---:|" * len(results)]
    for w in WIDTHS:
        lines.append(f"| {w:.2f} | " + " | ".join(_mean(results[arm][w]) for arm in results) + " |")
    return "\n".join(lines)


def search_markdown(rows: dict, command: str, seconds: float, seeds: int, epochs: int, ft_epochs: int) -> str:
    lines = _header(command, seconds) + [
        f"Sandwich-trained DigitsNet ({epochs} epochs, one model per seed, {seeds} seeds). `slimify.search` scores "
        f"candidates on the last {HELD_OUT} training images; the uniform width is the widest one (0.01 steps) with "
        "no more FLOPs than the searched configuration. Each configuration is exported, its BN calibrated (10 "
        f"batches), top-1 measured (*before*), then fine-tuned alone {ft_epochs} epochs (lr 0.02, same budget for "
        "both) and measured again on the validation split (*after*). Mean ± std over seeds.", "",
        "| budget | searched MFLOPs | uniform w (MFLOPs) | searched before | uniform before | searched after | "
        "uniform after | search time |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for text, r in rows.items():
        if text == "latency":
            continue
        lines.append(f"| {text} FLOPs | {statistics.mean(r['flops']) / 1e6:.2f} | "
                     f"{', '.join(f'{w:g}' for w in r['w'])} ({statistics.mean(r['uflops']) / 1e6:.2f}) | "
                     f"{_mean(r['before'])} | {_mean(r['ubefore'])} | {_mean(r['searched'])} | {_mean(r['uniform'])} | "
                     f"{statistics.mean(r['seconds']):.0f} s |")
    lines += ["", "Latency budget 0.7x of full width (CPU, batch 1, 1 thread, per-layer table; the machine was "
              "shared, so these timings are noisy):", "", "| seed | budget ms | table estimate ms | measured ms | "
              "table off by | search time |", "|---:|---:|---:|---:|---:|---:|"]
    for seed, (limit, est, real, secs) in enumerate(rows.get("latency", [])):
        lines.append(f"| {seed} | {limit:.3f} | {est:.3f} | {real:.3f} | {100 * (est - real) / real:+.1f}% | {secs:.0f} s |")
    return "\n".join(lines)


def bound_markdown(outs: list[dict], command: str, seconds: float, epochs: int) -> str:
    o = outs[0]
    lines = _header(command, seconds) + [
        f"timm models (random init, 10 classes) sandwich-trained {epochs} epoch(s) on digits at {o['size']}x{o['size']}, "
        f"then `search(..., flops 0.35x, fraction={o['fraction']:g})` scoring candidates on 64 held-out training "
        f"images at {o['size']}² with FLOPs counted at {o['cost_size']}² (`cost_input`; CLI `--eval-size "
        f"{o['size']} --cost-size {o['cost_size']}`). MACs of the exported model (torch.utils.flop_counter) "
        "relative to full width:", "",
        f"| model (divisor) | configuration | MACs ratio at {o['size']}² | MACs ratio at 224² | held-out top-1 | train | "
        "search |", "|---|---|---:|---:|---:|---:|---:|"]
    for o in outs:
        lines += [f"| {o['model']} ({o['divisor']}) | uniform 0.5 | {o['uniform_small']:.3f} | {o['uniform_224']:.3f} | "
                  f"{o['uniform'].get('0.5', float('nan')):.1f} | | |",
                  f"| | {o['name']} | {o['searched_small']:.3f} | **{o['searched_224']:.3f}** | "
                  f"{o['top1_searched']:.1f} (full {o['top1_full']:.1f}) | {o['train_s']:.0f} s | "
                  f"{o['moves']} moves, {o['search_s']:.0f} s |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["anywidth", "search", "bound"])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--ft-epochs", type=int, default=2)
    parser.add_argument("--budgets", default="0.3x,0.5x")
    parser.add_argument("--models", default="mobilenetv3_small_050:2,edgenext_xx_small:1",
                        help="bound: timm models (NAME:DIVISOR) whose uniform 0.5 misses 0.35 of the MACs.")
    parser.add_argument("--size", type=int, default=32, help="bound: side of the images candidates are scored on.")
    parser.add_argument("--fraction", type=float, default=0.1, help="bound: search fraction.")
    parser.add_argument("--cost-size", type=int, default=224, help="bound: input side at which FLOPs are counted.")
    parser.add_argument("--latency-seeds", type=int, default=1, help="Seeds that also run a latency search.")
    parser.add_argument("--write", action="store_true", help="Write the section of benchmarks/RESULTS.md.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    command = "python -m benchmarks.widths " + " ".join(sys.argv[1:] if argv is None else argv)
    start = time.perf_counter()
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.part == "anywidth":
        heading = "Any width (digits): sandwich vs fixed switches"
        text = any_width_markdown(any_width(args.seeds, args.epochs, log), command, time.perf_counter() - start,
                                  args.seeds, args.epochs)
    elif args.part == "search":
        heading = "Search vs uniform width (digits)"
        rows = search_vs_uniform(args.seeds, args.epochs, args.ft_epochs, tuple(args.budgets.split(",")), log,
                                 args.latency_seeds)
        text = search_markdown(rows, command, time.perf_counter() - start, args.seeds, args.epochs, args.ft_epochs)
    else:
        heading = "Searched configuration of mobilenetv3_small_050"
        outs = [bound_search(n, int(d), args.epochs, log, args.size, args.fraction, args.cost_size)
                for n, d in (m.split(":") for m in args.models.split(","))]
        text = bound_markdown(outs, command, time.perf_counter() - start, args.epochs)
    print(text)
    if args.write:
        write_section(heading, text)


if __name__ == "__main__":
    main()
