"""A whole fine-tuning run (:func:`finetune`, ``slimify.finetune``): start or resume, epochs of
:class:`~slimify.train.loop.Trainer` steps with validation and the best checkpoint, BN calibration
at the end, and what the run did.

    >>> result = slimify.finetune(model, digits("train"), "demo", val_data=digits("val"), out_dir="run")
    >>> print(result.eval)
"""
from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from slimify.errors import SlimifyError
from slimify.train.calibrate import calibrate_bn
from slimify.train.common import resolve_device
from slimify.train.evaluate import EvalResult, evaluate
from slimify.train.loader import usable_workers
from slimify.train.loop import CHECKPOINT_NAME, Trainer
from slimify.train.progress import show_progress
from slimify.train.recipe import Recipe, load_recipe

__all__ = ["finetune", "TrainResult"]


@dataclass
class TrainResult:
    """What :func:`finetune` did (the model itself was trained in place)."""

    model: nn.Module  # the trained model (same object as passed in)
    step: int  # optimizer steps taken in total
    epoch: int  # completed epochs
    finished: bool  # False when ``stop_after`` ended the run early
    losses: dict[float, float] = field(default_factory=dict)  # mean loss per switch, last epoch
    eval: EvalResult | None = None  # final validation metrics (with ``val_data``)
    checkpoint: Path | None = None  # the last checkpoint written
    ema_model: nn.Module | None = None  # the weights' moving average (recipe ``ema_decay``), a slimmable model
    eval_ema: EvalResult | None = None  # its final validation metrics


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _resume_path(resume: bool | str | Path, out_dir: Path | None) -> Path | None:
    if resume is False or resume is None:
        return None
    if resume is True:
        if out_dir is None:
            raise SlimifyError("resume=True needs out_dir (the run directory holding checkpoint.pt)")
        path = out_dir / CHECKPOINT_NAME
        return path if path.is_file() else None  # nothing to resume: start fresh
    path = Path(resume)
    if not path.is_file():
        raise SlimifyError(f"cannot resume: checkpoint {str(path)!r} does not exist")
    return path


def finetune(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    recipe: str | Path | Recipe | dict[str, Any] | None = "retrofit",
    *,
    val_data: Dataset | Iterable[Any] | None = None,
    out_dir: str | Path | None = None,
    resume: bool | str | Path = False,
    device: str | torch.device | None = None,
    stop_after: int | None = None,
    progress: bool | None = None,
    model_spec: dict[str, Any] | None = None,
    baseline: bool = True,
    echo: Callable[[str], None] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Train all switches of a converted ``model`` jointly, in place.

    ``recipe`` is a shipped recipe name ("demo", "retrofit", "resnet50_imagenet", ...), a YAML
    path, a dict or a :class:`Recipe`; keyword ``overrides`` change single fields (``epochs=3``).
    ``train_data`` is best a map-style Dataset: data order and augmentation then depend only on
    (seed, epoch, index), which makes ``resume`` exact and shards data under ``torchrun``.
    With ``out_dir`` the main process writes ``checkpoint.pt`` (each epoch end and every
    ``checkpoint_every`` steps) and ``log.jsonl``; ``resume=True`` continues from that
    checkpoint when it exists, ``resume=PATH`` from a given one. ``stop_after=k`` stops (with a
    checkpoint) once k optimizer steps are done in total. A plain model trains as one switch.
    With ``val_data`` and ``baseline``, a fresh run first evaluates every switch as converted
    (logged as "baseline", passed to ``echo``): the figure fine-tuning has to beat.
    """
    r = load_recipe(recipe, **overrides)
    out = Path(out_dir) if out_dir is not None else None
    ckpt = _resume_path(resume, out)
    trainer = Trainer(model, train_data, r, resolve_device(device), out, show_progress(progress), model_spec)
    trainer.echo = echo
    losses: dict[float, float] = {}
    path: Path | None = None
    try:
        _start(trainer, ckpt, val_data, baseline, echo)
        while trainer.epoch < r.epochs:
            meter = trainer.run_epoch(stop_after)
            losses = meter.means() or losses
            if trainer.batch >= trainer.steps_per_epoch:
                trainer.epoch, trainer.batch = trainer.epoch + 1, 0
                trainer.log.write("epoch", epoch=trainer.epoch, step=trainer.step, loss=losses,
                                  img_per_s=round(meter.throughput(), 1))
                improved = trainer.improves(_maybe_validate(trainer, val_data, final=False))
                _maybe_validate(trainer, val_data, final=False, ema=True)
                path = trainer.save()  # records the best score; the copy follows
                if improved:
                    trainer.keep_best(path)
            if stop_after is not None and trainer.step >= stop_after and trainer.epoch < r.epochs:
                path = trainer.save() if trainer.batch else path  # (an epoch end has just saved)
                trainer.metrics.close()
                return TrainResult(model, trainer.step, trainer.epoch, False, losses, None, path, _ema(trainer))
    finally:
        trainer.unsync()  # local BatchNorm for calibration, evaluation and the caller (sync_bn)
    if r.calibrate_batches > 0:
        before = trainer.last_eval if trainer.last_eval is not None and trainer.last_eval[0] == trainer.step \
            else (trainer.step, _maybe_validate(trainer, val_data, final=True))
        if before[1] is not None and echo is not None and trainer.info.is_main:
            echo(f"before BN calibration:\n{before[1].table()}")
        for net in (model, _ema(trainer)):
            if net is not None:  # a Dataset is sharded across processes, a loader of yours is not
                calibrate_bn(net, train_data, batches=r.calibrate_batches, batch_size=r.batch_size, seed=r.seed,
                             workers=r.workers, device=trainer.device)
        trainer.log.write("calibrate", batches=r.calibrate_batches)
    result = _maybe_validate(trainer, val_data, final=True)  # the caller prints it (TrainResult.eval)
    ema_result = _maybe_validate(trainer, val_data, final=True, ema=True)
    path = trainer.save()
    trainer.metrics.close()
    return TrainResult(model, trainer.step, trainer.epoch, True, losses, result, path, _ema(trainer), ema_result)


def _start(trainer: Trainer, ckpt: Path | None, val_data: Dataset | Iterable[Any] | None, baseline: bool,
           echo: Callable[[str], None] | None) -> None:
    """Resume from ``ckpt``, or start fresh: seed, log the start and (``baseline``) evaluate every
    switch as converted, the figure fine-tuning has to beat."""
    r = trainer.recipe
    if ckpt is not None:
        trainer.load(ckpt)
        if echo is not None and trainer.info.is_main:
            echo(f"resumed from step {trainer.step} of {trainer.updates_per_epoch * r.epochs}, epoch "
                 f"{min(trainer.epoch + 1, r.epochs)} of {r.epochs} ({ckpt})")
    else:
        _seed_everything(r.seed)
        trainer.log.write("start", recipe=trainer.recipe.to_dict(), switches=list(trainer.widths),
                          world=trainer.info.world, steps_per_epoch=trainer.steps_per_epoch,
                          workers=usable_workers(r.workers))
        if baseline and val_data is not None:
            before = evaluate(trainer.model, val_data, batch_size=r.batch_size, device=trainer.device,
                              workers=r.workers)
            trainer.log.write("baseline", top1=before.top1(), metrics=before.to_dict())
            trainer.metrics.eval("baseline", 0, 0, before.to_dict())
            if echo is not None and trainer.info.is_main:
                echo(f"before fine-tuning:\n{before.table()}")


def _ema(trainer: Trainer) -> nn.Module | None:
    return trainer.ema.module if trainer.ema is not None else None


def _maybe_validate(trainer: Trainer, val_data: Dataset | Iterable[Any] | None, final: bool,
                    ema: bool = False) -> EvalResult | None:
    """Evaluate every switch of the raw weights (or of the EMA, when there is one) on schedule."""
    every = trainer.recipe.eval_every
    net = _ema(trainer) if ema else trainer.model
    if net is None or val_data is None or (not final and (every == 0 or trainer.epoch % every)):
        return None
    result = evaluate(net, val_data, batch_size=trainer.recipe.batch_size, device=trainer.device,
                      workers=trainer.recipe.workers)
    event = "eval_ema" if ema else "eval"
    trainer.log.write(event, epoch=trainer.epoch, step=trainer.step, final=final, top1=result.top1(),
                      metrics=result.to_dict())
    trainer.metrics.eval(event, trainer.epoch, trainer.step, result.to_dict())
    if not ema:
        trainer.last_eval = (trainer.step, result)
    return result
