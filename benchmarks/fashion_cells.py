"""One cell of the Fashion-MNIST benchmark each: train (or fine-tune) one network one way with one
seed and return test top-1 per width. Cells share nothing but files on disk, so any subset can
run in any order, in any process, and a finished cell never runs again (benchmarks/fashion.py
caches them).

Every arm trains with the same recipe (``Setting.recipe``) on the same images; the retrofit row
runs the ``slimify`` CLI as a separate process, as a user would.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import slimify
from benchmarks.fashion_nets import NETS, reinit
from slimify.deploy.extract import export
from slimify.store.sources import create
from slimify.store.trust import trusted
from slimify.train import calibrate_bn, evaluate, finetune
from slimify.train.idx_data import idx_images
from slimify.train.loader import train_loader
from slimify.train.recipe import load_recipe

__all__ = ["Setting", "Cell", "run_cell", "budgets", "holder_alive", "SWITCHES", "SWITCHES8", "ANY_WIDTHS", "macs"]

REPO = Path(__file__).resolve().parent.parent
SWITCHES = (0.25, 0.5, 0.75, 1.0)
SWITCHES8 = tuple(round(0.25 + 0.75 * k / 7, 4) for k in range(8))  # 8 evenly spaced switches, 0.25 … 1.0
ANY_WIDTHS = (0.3, 0.4, 0.6, 0.7, 0.9)  # widths between the switches (row e)


@dataclass(frozen=True)
class Setting:
    """The knobs that decide the cost of a run: images, epochs, calibration batches."""

    name: str  # full | quick | smoke
    train_images: int  # of Fashion-MNIST's training set (stratified; a fifth is held out as val)
    test_images: int | None  # of its test set (None: all 10,000)
    epochs: int  # from-scratch epochs of rows a, b, d, e (the retrofit budgets are shares of it)
    calibrate_batches: int  # BN calibration batches per width (zero-shot, any width, retrofit)
    nets: tuple[str, ...]
    seeds: int
    recipe: dict[str, Any] = field(default_factory=dict)  # from-scratch recipe (every arm)


SCRATCH = dict(batch_size=128, lr=0.1, nesterov=True, weight_decay=5e-4, schedule="cosine", warmup_epochs=1.0,
               narrow_loss="distill", calibrate_batches=0, eval_every=0, workers=0, log_every=50)
RETROFIT_RECIPE = "retrofit_fashion_mnist"  # the shipped recipe the retrofit row runs (docs/training.md shows it)
RETROFIT = {k: v for k, v in load_recipe(RETROFIT_RECIPE).to_dict().items() if k not in ("notes", "epochs", "seed")}


@dataclass(frozen=True)
class Cell:
    """What one cell computes: ``row`` (individual, slimmable, …), its ``variant``, ``net``, ``seed``."""

    row: str
    variant: str
    net: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.net}/{self.row}/{self.variant}/seed{self.seed}"


def budgets(epochs: int) -> list[int]:
    """Retrofit fine-tuning epochs: 10, 25 and 50 % of the from-scratch epochs (at least 1)."""
    return sorted({max(1, round(epochs * f)) for f in (0.1, 0.25, 0.5)})


def holder_alive(path: Path) -> bool:
    """Whether the process whose pid ``path`` holds is still running."""
    try:
        os.kill(int(path.read_text() or 0), 0)
        return True
    except (ValueError, ProcessLookupError, FileNotFoundError):
        return False
    except PermissionError:
        return True


def _data(data_dir: Path, split: str, net: str, augment: bool | None = None) -> Any:
    return idx_images(str(data_dir), split, NETS[net][1], augment=augment)


def _plain(net: str) -> nn.Module:
    with trusted("benchmarks"):
        return create(NETS[net][0])


def _example(net: str) -> torch.Tensor:
    return torch.randn(1, *NETS[net][1])


def _convert(model: nn.Module, net: str, switches: tuple[float, ...] = SWITCHES) -> nn.Module:
    return slimify.convert(model, switches=switches, example_input=_example(net))


def macs(net: str, widths: tuple[float, ...]) -> dict[float, float]:
    """Multiply-accumulates per image of each width's exported plain network (torch's flop counter)."""
    model = _convert(_plain(net), net)
    return {w: macs_of(model, net, w) for w in widths}


def macs_of(model: nn.Module, net: str, value: Any) -> float:
    """Multiply-accumulates per image of ``model`` exported at ``value`` (a width or configuration name)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an uncalibrated width says what it borrows: known here
        export(model, value).eval()(_example(net))
    return counter.get_total_flops() / 2


def _test(model: nn.Module, data_dir: Path, net: str, widths: Any = None) -> dict[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an uncalibrated width says what it borrows: known here
        return evaluate(model.eval(), _data(data_dir, "test", net), widths=widths).top1()


def _train(model: nn.Module, s: Setting, data_dir: Path, net: str, seed: int, runs: Path | None = None,
           stop_after: int | None = None, **changes: Any) -> nn.Module:
    """Train from scratch with the table's recipe. With ``runs`` a checkpoint is kept at every epoch's
    end in a folder of it named after the setting and recipe, and a killed run resumes from it
    (exactly: the data is a map-style dataset), so a stopped session loses at most an epoch of a
    cell, not the cell; a changed recipe starts afresh. ``stop_after`` (steps): the tests' kill."""
    recipe = {**SCRATCH, "epochs": s.epochs, **s.recipe, **changes}
    out = None
    if runs is not None:
        digest = hashlib.sha256(json.dumps([s.name, net, seed, recipe], sort_keys=True, default=str).encode())
        out = runs / digest.hexdigest()[:12]
    finetune(model, _data(data_dir, "train", net), recipe, seed=seed, progress=False, baseline=False, out_dir=out,
             resume=out is not None, stop_after=stop_after)
    return model


def run_dir(s: Setting, cell: Cell, work: Path) -> Path:
    """Where a cell's training keeps its checkpoints until the cell's result is cached (per setting:
    a trial may train a table cell's network with other epochs)."""
    return work / "runs" / s.name / cell.key.replace("/", "_")


def done_with(s: Setting, cell: Cell, work: Path) -> None:
    """The cell's result is cached: its checkpoints are no longer needed."""
    shutil.rmtree(run_dir(s, cell, work), ignore_errors=True)


def _individual(s: Setting, data_dir: Path, cell: Cell, work: Path) -> dict[float, float]:
    """The plain architecture of the width (``slimify.export``'s shape), fresh weights, trained
    alone; the full-width one is also saved as the retrofit row's checkpoint (plain weights)."""
    from safetensors.torch import save_file

    width = float(cell.variant)
    torch.manual_seed(cell.seed)
    plain = reinit(export(_convert(_plain(cell.net), cell.net), width))
    torch.manual_seed(cell.seed)
    _train(plain, s, data_dir, cell.net, cell.seed, run_dir(s, cell, work))
    if width == 1.0:
        path = _checkpoint_path(cell, work)
        save_file({k: v.contiguous() for k, v in plain.state_dict().items()}, str(path.with_suffix(".tmp")))
        path.with_suffix(".tmp").replace(path)
    return {width: _test(plain, data_dir, cell.net)[1.0]}


def _wait_for(work: Path, cell: Cell, path: Path) -> None:
    """Wait while another process of the benchmark is computing the cell that writes ``path``."""
    import time

    claims = [p for p in work.glob(f"claims-*/{cell.key.replace('/', '_')}") if p.exists()]
    while not path.exists() and any(holder_alive(p) for p in claims):
        time.sleep(10)


def _checkpoint_path(cell: Cell, work: Path) -> Path:
    return work / f"{cell.net}-seed{cell.seed}-plain.safetensors"


def _calibrated(model: nn.Module, data_dir: Path, net: str, batches: int, widths: Any = None) -> nn.Module:
    model = copy.deepcopy(model)
    calibrate_bn(model, _data(data_dir, "train", net, augment=False), batches=batches, widths=widths,
                 batch_size=128)
    return model


def _slimmable(s: Setting, data_dir: Path, cell: Cell, work: Path) -> dict[float, float]:
    """Row b and its variants from d and e: one converted network trained from scratch."""
    torch.manual_seed(cell.seed)
    switches = SWITCHES8 if cell.variant == "8-switches" else SWITCHES
    model = _convert(_plain(cell.net), cell.net, switches)
    changes: dict[str, Any] = {}
    any_width = cell.variant in ("sandwich", "sandwich-labels")  # the second: a trial's, not the table's
    if cell.variant in ("labels", "sandwich-labels"):
        changes["narrow_loss"] = "labels"
    elif cell.variant == "shared-bn":
        from benchmarks.accuracy import share_batchnorm

        model = share_batchnorm(model)
    if any_width:
        changes.update(width_range=[SWITCHES[0], 1.0], sandwich=2)
    torch.manual_seed(cell.seed)
    _train(model, s, data_dir, cell.net, cell.seed, run_dir(s, cell, work), **changes)
    if any_width:  # any width: BN statistics calibrated per width after training (US-Nets)
        if cell.variant == "sandwich":  # row f searches this network
            with trusted("benchmarks"):
                slimify.save(model, _sandwich_path(cell, work), overwrite=True)
        widths = sorted({*ANY_WIDTHS, *SWITCHES})
        return _test(_calibrated(model, data_dir, cell.net, s.calibrate_batches, widths), data_dir, cell.net,
                     widths)
    return _test(model, data_dir, cell.net)


def _frozen_slices(model: nn.Module, width: float) -> dict[str, tuple[slice, ...]]:
    """For each shared weight, the prefix a narrower switch used (its exported shape): frozen."""
    narrow = dict(export(model, width).named_parameters())
    return {name: tuple(slice(0, n) for n in narrow[name].shape) for name, p in model.named_parameters()
            if name in narrow and ".slim_bn." not in name and not isinstance(_owner(model, name), nn.BatchNorm2d)}


def _owner(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0])


def _batches(dataset: Any, s: Setting, seed: int, epochs: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for epoch in range(epochs):
        yield from train_loader(dataset, s.recipe.get("batch_size", SCRATCH["batch_size"]), seed, epoch)


def _incremental(s: Setting, data_dir: Path, cell: Cell) -> dict[float, float]:
    """The paper's incremental training: train the narrowest switch alone, freeze it, train the next
    one's added channels (and its private BN), and so on; each stage gets the recipe's epochs."""
    torch.manual_seed(cell.seed)
    model = _convert(_plain(cell.net), cell.net)
    data = _data(data_dir, "train", cell.net)
    frozen: dict[str, tuple[slice, ...]] = {}
    for k, width in enumerate(SWITCHES):
        keep = {n: p.detach()[frozen[n]].clone() for n, p in model.named_parameters() if n in frozen}
        params = dict(model.named_parameters())
        opt = torch.optim.SGD(params.values(), lr=SCRATCH["lr"], momentum=0.9, nesterov=True,
                              weight_decay=SCRATCH["weight_decay"])
        steps = s.epochs * (len(data) // SCRATCH["batch_size"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, SCRATCH["lr"], total_steps=max(steps, 1),
                                                    pct_start=min(0.3, 1 / max(s.epochs, 1)), anneal_strategy="cos")
        model.train()
        with slimify.width(model, width):
            for x, y in _batches(data, s, cell.seed + 1000 * k, s.epochs):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    for n, value in keep.items():
                        params[n][frozen[n]] = value
        frozen = _frozen_slices(model, width)
    return _test(model, data_dir, cell.net)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-m", "slimify", "--trust-source", "benchmarks", *args], cwd=REPO,
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"slimify {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def _cli_eval(model_path: Path, data_dir: Path, out: Path) -> dict[float, float]:
    _cli("eval", str(model_path), "--data", str(data_dir), "--json", str(out), "--force")
    return {row["width"]: row["top1"] for row in json.loads(out.read_text())}


def _checkpoint(s: Setting, data_dir: Path, cell: Cell, work: Path) -> Path:
    """Row a's full-width network as plain weights (the user's checkpoint): trained by its cell."""
    path = _checkpoint_path(cell, work)
    _wait_for(work, Cell("individual", "1", cell.net, cell.seed), path)
    if not path.exists():
        _individual(s, data_dir, Cell("individual", "1.0", cell.net, cell.seed), work)
    return path


def _retrofit(s: Setting, data_dir: Path, cell: Cell, work: Path) -> dict[float, float]:
    """Row c through the CLI: convert the trained checkpoint (variant "<reorder>-<epochs>"; epochs
    0 = zero-shot, BN calibrated only), fine-tune, evaluate on the test set."""
    reorder, _, epochs = cell.variant.partition("-")
    spec, size = NETS[cell.net]
    run = work / cell.key.replace("/", "_")
    run.mkdir(parents=True, exist_ok=True)
    slim = run / "converted.slim"
    _cli("convert", spec, "--checkpoint", str(_checkpoint(s, data_dir, cell, work)), "--num-classes", "10",
         "--input-size", "x".join(map(str, size)), "--reorder", reorder, "-o", str(slim), "--force")
    if int(epochs) == 0:
        calibrated = run / "calibrated.slim"
        _cli("calibrate", str(slim), "--data", str(data_dir), "--batches", str(s.calibrate_batches), "--batch-size",
             "128", "-o", str(calibrated), "--force")
        return _cli_eval(calibrated, data_dir, run / "eval.json")
    recipe = run / "recipe.yaml"
    recipe.write_text(json.dumps({**RETROFIT, "seed": cell.seed, "epochs": int(epochs)}))  # JSON is YAML
    _cli("finetune", str(slim), "--data", str(data_dir), "--recipe", str(recipe), "-o", str(run / "run"),
         "--force", "--no-progress")
    return _cli_eval(run / "run" / "model.slim", data_dir, run / "eval.json")


def _search(s: Setting, data_dir: Path, cell: Cell, work: Path) -> dict[str, float]:
    """Row f: search at a FLOPs budget (variant "0.3x") on the sandwich-trained network vs the
    widest uniform width of no more FLOPs; both exported, BN-calibrated and fine-tuned the same
    way (a quarter of the epochs). Top-1 and MAC share of each, and the uniform width."""
    from slimify.selection.config_search import parse_budget, search
    from slimify.train.loader import as_batches

    budget = float(cell.variant.rstrip("x"))
    model = _sandwich_model(s, data_dir, cell, work)
    val = list(as_batches(_data(data_dir, "val", cell.net, augment=False), 256))
    result = search(model, val, parse_budget("flops", f"{budget}x"))
    full = macs_of(model, cell.net, 1.0)
    target = macs_of(model, cell.net, result.name)
    uniform = max((w / 100 for w in range(25, 101) if macs_of(model, cell.net, w / 100) <= target), default=0.25)
    out = {}
    for key, value in (("searched", result.name), ("uniform", uniform)):
        plain = export(_calibrated(model, data_dir, cell.net, s.calibrate_batches, [value]), value)
        torch.manual_seed(cell.seed)
        finetune(plain, _data(data_dir, "train", cell.net), {**RETROFIT, "calibrate_batches": 0},
                 epochs=max(1, s.epochs // 4), seed=cell.seed, progress=False, baseline=False)
        out[key] = _test(plain, data_dir, cell.net)[1.0]
        out[f"{key}_macs"] = macs_of(model, cell.net, value) / full
    out["uniform_width"] = uniform
    return out


def _sandwich_path(cell: Cell, work: Path) -> Path:
    return work / f"{cell.net}-seed{cell.seed}-sandwich.slim"


def _sandwich_model(s: Setting, data_dir: Path, cell: Cell, work: Path) -> nn.Module:
    """The sandwich-trained network of row e (trained by its cell, saved there)."""
    path = _sandwich_path(cell, work)
    _wait_for(work, Cell("slimmable", "sandwich", cell.net, cell.seed), path)
    if not path.exists():
        _slimmable(s, data_dir, Cell("slimmable", "sandwich", cell.net, cell.seed), work)
    with trusted("benchmarks"):
        return slimify.load(path)


def run_cell(s: Setting, data_dir: Path, cell: Cell, work: Path) -> dict[Any, float]:
    """Test top-1 per width (or per named arm for search) of one cell."""
    if cell.row == "individual":
        return _individual(s, data_dir, cell, work)
    if cell.row == "slimmable":
        return _slimmable(s, data_dir, cell, work)
    if cell.row == "incremental":
        return _incremental(s, data_dir, cell)
    if cell.row == "retrofit":
        return _retrofit(s, data_dir, cell, work)
    if cell.row == "search":
        return _search(s, data_dir, cell, work)
    raise ValueError(f"unknown row {cell.row!r}")
