"""Accuracy benchmark on the embedded digits data: is one slimmable network as good as a family of
individually trained ones, does switchable BN matter, and how well does a retrofit do?

Arms (same model family, DigitsNet; same recipe and epochs for every from-scratch arm):
  1. individual  plain DigitsNet built at each width, trained alone
  2. slimmable   converted DigitsNet trained from scratch, all switches per step, private BN
  3. shared-BN   the same, but every switch reads the first channels of one shared BN
                 (emulated: see ``share_batchnorm``; the core has no switch for it yet)
  4. retrofit    arm 1's full-width model, converted, fine-tuned briefly (distillation + BN calibration)

    python -m benchmarks.accuracy --seeds 3 --epochs 5 --reorder none,l1 --write
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn as nn

import slimify
from benchmarks.results import RESULTS, machine, write_section
from slimify.analysis.plan import make_divisible
from slimify.rewrite.serve import slim_data
from slimify.store.digits_net import DigitsNet
from slimify.train import digits, evaluate, finetune

__all__ = ["run", "share_batchnorm", "to_markdown", "main"]

SWITCHES = (0.25, 0.5, 0.75, 1.0)
HEADING = "Accuracy (digits)"  # our section of benchmarks/RESULTS.md
# the from-scratch recipe shared by arms 1-3 (the paper trains every switch on labels)
SCRATCH: dict[str, object] = dict(lr=0.1, schedule="cosine", warmup_epochs=0.3, narrow_loss="labels",
                                  calibrate_batches=0, eval_every=0, grad_clip=None)
# the retrofit fine-tuning recipe: slimify's pipeline (the "demo" recipe: distillation, BN calibration)
RETROFIT: dict[str, object] = dict(lr=0.05, calibrate_batches=10, eval_every=0)


def share_batchnorm(model: nn.Module) -> nn.Module:
    """Emulate one BatchNorm shared by all switches on a converted model: each switch is served
    a prefix view of the full-width BN (statistics and affine), and the private copies go.

    Relies on ``slimify.nn.serve.SlimData`` internals (views keep in-place statistic updates
    reaching the shared tensors); ask the core for ``convert(..., shared_bn=True)``.
    """
    for _, module in model.named_modules():
        data = slim_data(module)
        if data is None or data.bn_slots is None:
            continue
        holders = module._modules["slim_bn"]
        sizes = [module.num_features if slot is None else holders[slot].running_mean.numel()
                 for slot in data.bn_slots]
        for name in ("weight", "bias", "running_mean", "running_var"):
            data.params[name] = [{0: slice(0, k)} if k < module.num_features else {} for k in sizes]
        data.bn_slots = [None] * len(sizes)
        del module.slim_bn
    return model


def _check_shared_bn(channels: tuple[int, int, int], divisor: int) -> None:
    """The emulation computes what switchable BN computes in train mode, but shares statistics."""
    torch.manual_seed(0)
    private = _slim(channels, divisor)
    torch.manual_seed(0)
    shared = share_batchnorm(_slim(channels, divisor))  # the same initial weights
    x = torch.randn(8, 3, 32, 32)
    with slimify.width(private, 0.25), slimify.width(shared, 0.25):
        assert torch.allclose(private(x), shared(x), atol=1e-5)
    full_bn = shared[1]
    assert not torch.equal(full_bn.running_mean, private[1].running_mean)  # narrow pass updated shared stats
    assert len([n for n, _ in shared.named_parameters() if "slim_bn" in n]) == 0


def _train(model: nn.Module, epochs: int, seed: int, recipe: str, overrides: dict[str, object]) -> nn.Module:
    finetune(model, digits("train"), recipe, epochs=epochs, seed=seed, progress=False, **overrides)
    return model


def _slim(channels: tuple[int, int, int], divisor: int) -> nn.Module:
    return slimify.convert(DigitsNet(channels=channels), SWITCHES, divisor, torch.randn(1, 3, 32, 32))


def run_seed(seed: int, epochs: int, ft_epochs: int, channels: tuple[int, int, int], divisor: int,
             reorders: tuple[str | None, ...], log: Callable[[str], None]) -> dict[str, dict[float, float]]:
    """Top-1 per arm and switch for one seed."""
    val, out = digits("val"), {}
    individual, full = {}, None
    for w in SWITCHES:
        torch.manual_seed(seed)
        plain = _train(DigitsNet(channels=channels, width=w, divisor=divisor), epochs, seed, "demo", SCRATCH)
        individual[w] = evaluate(plain, val).rows[0].top1
        full = plain if w == 1.0 else full
    out["individual"] = individual
    for arm, make in (("slimmable", lambda: _slim(channels, divisor)),
                      ("shared-BN", lambda: share_batchnorm(_slim(channels, divisor)))):
        torch.manual_seed(seed)
        out[arm] = evaluate(_train(make(), epochs, seed, "demo", SCRATCH), val).top1()
    assert full is not None
    for method in reorders:
        torch.manual_seed(seed)
        retro = slimify.convert(copy.deepcopy(full), SWITCHES, divisor, torch.randn(1, 3, 32, 32), reorder=method)
        arm = "retrofit" if method is None else f"retrofit+{method}"
        out[arm] = evaluate(_train(retro, ft_epochs, seed, "demo", RETROFIT), val).top1()
    log(f"seed {seed}: " + "; ".join(f"{a} " + " ".join(f"{v:.1f}" for _, v in sorted(r.items()))
                                     for a, r in out.items()))
    return out


def run(seeds: int, epochs: int, ft_epochs: int, channels: tuple[int, int, int], divisor: int,
        reorders: tuple[str | None, ...] = (None,), log: Callable[[str], None] = lambda m: print(m, flush=True)) -> dict[str, dict[float, list[float]]]:
    """Top-1 lists (one per seed) per arm and switch."""
    _check_shared_bn(channels, divisor)
    results: dict[str, dict[float, list[float]]] = {}
    for seed in range(seeds):
        for arm, row in run_seed(seed, epochs, ft_epochs, channels, divisor, reorders, log).items():
            for w, v in row.items():
                results.setdefault(arm, {}).setdefault(w, []).append(v)
    return results


def to_markdown(results: dict[str, dict[float, list[float]]], command: str, seconds: float, epochs: int,
                ft_epochs: int, channels: tuple[int, int, int], divisor: int) -> str:
    budget = {"individual": f"{epochs} ep each", "slimmable": f"{epochs} ep", "shared-BN": f"{epochs} ep"}
    head = "| arm | budget | " + " | ".join(f"w={w:g}" for w in SWITCHES) + " |"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"Command: `{command}`  ", f"Machine: {machine()}; {seconds:.0f} s in total (load average at the end "
             f"{load:.1f}: the time depends on it, the accuracies do not).", "",
             f"Top-1 % on the digits validation split (360 images), mean ± std over {len(next(iter(results.values()))[1.0])} "
             f"seeds. Model: DigitsNet channels {channels}, divisor {divisor} (w=0.25 keeps "
             f"{tuple(make_divisible(c * 0.25, divisor) for c in channels)} channels).", "", head,
             "|---|---|" + "---:|" * len(SWITCHES)]
    for arm, row in results.items():
        cells = [f"{statistics.mean(row[w]):.1f} ± {statistics.stdev(row[w]) if len(row[w]) > 1 else 0:.1f}"
                 for w in SWITCHES]
        lines.append(f"| {arm} | {budget.get(arm, f'{epochs} ep plain + {ft_epochs} ep')} | " + " | ".join(cells) + " |")
    lines += ["", "individual: a plain model per width; slimmable: one converted model, all switches per step, "
              "private BN; shared-BN: the same with one BN for all switches (emulated with prefix views of "
              "the full BN); retrofit: the individual full-width model, converted (retrofit+METHOD: "
              "channels reordered by that importance score first, same budget), then fine-tuned with in-place distillation and BN calibration. "
              "Arms 1-3 use no BN calibration.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of arms 1-3 (and arm 4's pretraining)")
    parser.add_argument("--ft-epochs", type=int, default=2, help="retrofit fine-tuning epochs")
    parser.add_argument("--channels", default="16,32,64")
    parser.add_argument("--divisor", type=int, default=4)
    parser.add_argument("--reorder", default="none", help="retrofit variants: comma-separated none,l1,l2,bn")
    parser.add_argument("--write", action="store_true", help="write the table into benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    channels = tuple(int(c) for c in args.channels.split(","))
    assert len(channels) == 3 and args.seeds >= 1
    start = time.perf_counter()
    reorders = tuple(None if r == "none" else r for r in args.reorder.split(","))
    results = run(args.seeds, args.epochs, args.ft_epochs, channels, args.divisor, reorders)  # type: ignore[arg-type]
    command = "python -m benchmarks.accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
    section = to_markdown(results, command.strip(), time.perf_counter() - start, args.epochs, args.ft_epochs,
                          channels, args.divisor)  # type: ignore[arg-type]
    print(section)
    if args.write:
        write_section(HEADING, section)
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
