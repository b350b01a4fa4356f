"""The all-switch training loop: every optimizer step runs all switches on the same batch (widest
first), accumulates their gradients and steps once (Yu et al., ICLR 2019, Algorithm 1).
:class:`Trainer` holds one run's state and takes its steps and epochs; ``slimify/train/run.py``
(:func:`~slimify.train.run.finetune`) drives a whole run with it.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import shutil
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

import slimify
from slimify.errors import SlimifyError
from slimify.store.sources import check_state_dict
from slimify.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from slimify.train.common import at_width, model_widths
from slimify.train.compile import compile_model, strip_wrapper_prefixes
from slimify.train.distributed import DistInfo, barrier, init_from_env, wrap_ddp
from slimify.train.drop_path import set_drop_path
from slimify.train.ema import SwitchEma
from slimify.train.evaluate import EvalResult
from slimify.train.loader import is_loader, train_loader, usable_workers
from slimify.train.losses import step_widths, switch_loss
from slimify.train.mixing import build_mixup, smoothing, uses_mixing
from slimify.train.precision import amp_dtype, autocast, grad_scaler, to_channels_last
from slimify.train.progress import LossMeter, RunLog, progress_bar
from slimify.train.recipe import Recipe
from slimify.train.sandwich import check_width_range, loss_key, sandwich_widths
from slimify.train.sync_bn import revert_sync_batchnorm, sync_for_run
from slimify.train.timm_optim import create_optimizer, create_schedule, global_lr
from slimify.train.watch import MetricsLog, progress_line

__all__ = ["Trainer", "CHECKPOINT_NAME", "BEST_NAME", "LOG_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"  # latest checkpoint in a run directory
BEST_NAME = "best.pt"  # the checkpoint with the best mean top-1 over switches so far
LOG_NAME = "log.jsonl"  # the run's JSON-lines log


class Trainer:
    """State of one run: model, optimizer, schedule, scaler and the position in the data."""

    def __init__(self, model: nn.Module, data: Dataset | DataLoader, recipe: Recipe, device: torch.device,
                 out_dir: Path | None, progress: bool, model_spec: dict[str, Any] | None):
        self.data, self.device, self.model_spec = data, device, model_spec or {}
        self.info: DistInfo = init_from_env(device)
        self.recipe = recipe = recipe.replace(lr=global_lr(recipe, self.info.world))  # timm's batch scaling
        self.model = model.to(device)
        if recipe.channels_last:
            to_channels_last(self.model)
        if recipe.drop_path is not None:
            set_drop_path(self.model, recipe.drop_path)
        self.widths = model_widths(model)
        if recipe.width_range is not None:  # continuous widths: both ends must be servable
            check_width_range(model, recipe.width_range)
            if recipe.compile:  # every new width is a new slot, i.e. a new graph: compiling never ends
                raise SlimifyError("recipe: compile and width_range do not go together (each width drawn is a new "
                                   "graph to compile); set compile: false, or train fixed switches")
        if recipe.configs:  # named configurations (searched ones) train beside the switches
            model_widths(model, recipe.configs)
        self.ddp = wrap_ddp(self.model, device, self.info, slimify.is_slimmable(model))
        self.forward = compile_model(self.ddp, recipe.compile, len(self.widths) + len(recipe.configs))  # state dicts: self.model's
        self.optimizer = create_optimizer(self.model, recipe)
        self.steps_per_epoch = self._steps_per_epoch()  # batches; optimizer updates: see updates_per_epoch
        self.scheduler = create_schedule(self.optimizer, recipe, self.updates_per_epoch)
        self.dtype = amp_dtype(recipe, device)
        self.scaler = grad_scaler(device, self.dtype)
        self.ema = SwitchEma(self.model, recipe.ema_decay) if recipe.ema_decay else None
        self.mixup: Any = None  # built at the first batch, when the number of classes is known
        self.last_eval: tuple[int, EvalResult] | None = None  # (step, metrics) of the latest validation
        self.step = self.epoch = self.batch = self.micro = 0  # micro: batches accumulated toward the next step
        main_dir = out_dir if self.info.is_main else None
        self.out_dir, self.ckpt_dir = out_dir, main_dir
        self.log = RunLog(main_dir / LOG_NAME if main_dir is not None else None)
        self.metrics = MetricsLog(main_dir, recipe.tensorboard)
        self.progress = progress and self.info.is_main
        self.echo: Callable[[str], None] | None = None  # periodic lines when there is no progress bar
        self.best: float | None = None  # best mean top-1 over switches (BEST_NAME holds that checkpoint)
        self.synced = sync_for_run(self.model, recipe.sync_bn, self.info.world)  # last: nothing after it can fail

    def unsync(self) -> None:
        """Local BatchNorm again (``sync_bn``) once training ends: BN calibration reduces its own
        statistics over shards of uneven length, and the caller gets the model's own classes back."""
        if self.synced:
            for net in (self.model, self.ema.module if self.ema is not None else None):
                if net is not None:
                    revert_sync_batchnorm(net)
            self.synced = False

    def _steps_per_epoch(self) -> int:
        if is_loader(self.data):
            return len(self.data)  # type: ignore[arg-type]
        per_rank = len(self.data) // self.info.world  # type: ignore[arg-type]
        steps = per_rank // self.recipe.batch_size
        if steps == 0:
            raise SlimifyError(f"{len(self.data)} training images are fewer than one batch of "  # type: ignore[arg-type]
                               f"{self.recipe.batch_size} per process ({self.info.world} processes)")
        return steps

    @property
    def updates_per_epoch(self) -> int:
        """Optimizer updates per epoch: one per ``accum_steps`` batches (a last partial group steps too)."""
        return -(-self.steps_per_epoch // self.recipe.accum_steps)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[float, float]:
        """Forward + backward at each width, widest first, on one batch; every ``accum_steps``
        batches (and at the end of an epoch) one optimizer update."""
        r = self.recipe
        widths = step_widths(self.widths, r.sandwich, r.seed, self.step) if r.width_range is None else \
            sandwich_widths(r.width_range, r.sandwich, r.seed, self.step)
        widths = [widths[0], *r.configs, *widths[1:]]  # after the widest: it is their teacher
        update = self.micro + 1 >= r.accum_steps or self.batch + 1 >= self.steps_per_epoch
        if self.micro == 0:
            self.optimizer.zero_grad(set_to_none=True)
        images, targets = self._mix(images, labels)
        if r.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        teacher: torch.Tensor | None = None
        keyed: dict[Any, list[torch.Tensor]] = {}
        for i, w in enumerate(widths):
            last = update and i == len(widths) - 1  # DDP all-reduces gradients once, before the update
            sync = contextlib.nullcontext() if last or not self.info.enabled else self.ddp.no_sync()
            with sync, at_width(self.model, w):
                with autocast(self.device, self.dtype):
                    logits = self.forward(images)
                    loss = switch_loss(logits, targets, teacher, r.narrow_loss, smoothing(r), r.distill_temperature)
                self.scaler.scale(loss / r.accum_steps).backward()
            if teacher is None and r.narrow_loss == "distill":
                teacher = logits.detach()
            key = w if r.width_range is None or isinstance(w, str) else loss_key(i, len(widths), w)
            keyed.setdefault(key, []).append(loss.detach())
        losses = {k: v[0] if len(v) == 1 else torch.stack(v).mean() for k, v in keyed.items()}
        values = torch.stack(list(losses.values()))  # one device sync per step, not one per switch
        if not bool(torch.isfinite(values).all()):  # stop before a NaN/inf reaches the weights
            self._diverged(dict(zip(losses, values.tolist())))
        self.micro += 1
        if update:
            self._update()
        return dict(zip(losses, values.tolist()))

    def _update(self) -> None:
        """One optimizer update from the accumulated gradients, then schedule and EMA."""
        self.scaler.unscale_(self.optimizer)
        if self.recipe.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.micro = 0
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)

    def _mix(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup/CutMix images and soft targets when the recipe asks for them, else the labels."""
        if not uses_mixing(self.recipe):
            return images, labels
        if self.mixup is None:
            self.mixup = build_mixup(self.recipe, self._num_classes(images))
        return self.mixup(images, labels)

    @torch.no_grad()
    def _num_classes(self, images: torch.Tensor) -> int:
        """Outputs of the model (one image in eval mode: no BatchNorm statistics change)."""
        self.model.eval()
        try:
            return int(self.model(images[:1]).shape[-1])
        finally:
            self.model.train()

    def _diverged(self, losses: dict[float, float]) -> None:
        """Stop the run: a switch's loss is NaN or infinite; the weights were not updated with it."""
        w, value = next((w, v) for w, v in losses.items() if not math.isfinite(v))
        ckpt = self.ckpt_dir / CHECKPOINT_NAME if self.ckpt_dir is not None else None
        kept = f"the last good checkpoint is {ckpt}" if ckpt is not None and ckpt.is_file() else "no checkpoint kept"
        self.log.write("diverged", step=self.step + 1, epoch=self.epoch, width=w, loss=str(value))
        where = f"{w:g}" if isinstance(w, float) else w  # a width, or a configuration's name / "random"
        raise SlimifyError(f"loss is {value} at width {where} in step {self.step + 1} (epoch {self.epoch + 1}): "
                           f"stopped before updating the weights; {kept}. Lower the learning rate, set "
                           "grad_clip or check the data")

    def _epoch_batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        if is_loader(self.data):  # the caller's loader: order is the caller's business, the epoch ours to tell
            sampler = getattr(self.data, "sampler", None)
            if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle each epoch
                sampler.set_epoch(self.epoch)  # type: ignore[union-attr]
            return itertools.islice(self.data, self.batch, None)  # type: ignore[call-overload]
        r = self.recipe
        return train_loader(self.data, r.batch_size, r.seed, self.epoch, self.batch, self.info.rank,
                            self.info.world, usable_workers(r.workers), pin_memory=self.device.type == "cuda")

    def run_epoch(self, stop_after: int | None) -> LossMeter:
        """Train until the epoch ends or ``stop_after`` steps have been taken in total."""
        meter = LossMeter()
        self.model.train()
        bar = progress_bar(self.steps_per_epoch, self.batch, f"epoch {self.epoch + 1}/{self.recipe.epochs}",
                           self.progress)
        with bar:
            for images, labels in self._epoch_batches():
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
                losses = self.train_step(images, labels)
                self.batch += 1
                meter.update(losses, images.shape[0] * self.info.world)
                bar.set_postfix(meter.postfix(), refresh=False)
                bar.update()
                if self.micro:  # mid-accumulation: no update yet, nothing to log, save or stop at
                    continue
                self._after_step(losses, meter)
                if stop_after is not None and self.step >= stop_after:
                    break
        return meter

    def _after_step(self, losses: dict[float, float], meter: LossMeter) -> None:
        r = self.recipe
        if self.step % r.log_every == 0:
            lr = self.scheduler.get_last_lr()[0]
            self.log.write("train", step=self.step, epoch=self.epoch, lr=lr, loss=losses,
                           img_per_s=round(meter.throughput(), 1))
            self.metrics.train(self.epoch, self.step, lr, losses, meter.throughput())
            if self.echo is not None and not self.progress and self.info.is_main:
                self.echo(progress_line(self.epoch, r.epochs, self.batch, self.steps_per_epoch, self.step, lr,
                                        meter.means(), meter.throughput()))
        if r.checkpoint_every and self.step % r.checkpoint_every == 0:
            self.save()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "step": self.step, "epoch": self.epoch, "batch": self.batch, "rng": rng_state(),
                "data": {"seed": self.recipe.seed, "epoch": self.epoch, "batch": self.batch,
                         "world": self.info.world, "steps_per_epoch": self.steps_per_epoch},
                "recipe": self.recipe.to_dict(), "model_spec": self.model_spec, "switches": list(self.widths),
                "best": self.best, **({"ema": self.ema.state_dict()} if self.ema is not None else {})}

    def save(self) -> Path | None:
        """Checkpoint (main process only); every process waits until it is on disk."""
        path = None
        bad = next((n for n, t in self.model.state_dict().items() if t.is_floating_point() and
                    not bool(torch.isfinite(t).all())), None)
        if bad is not None:  # never replace the last good checkpoint with a diverged one
            raise SlimifyError(f"after step {self.step}, {bad} is not finite (training diverged): not checkpointed, "
                               "the last good checkpoint is kept. Lower the learning rate or set grad_clip")
        if self.ckpt_dir is not None:
            path = save_checkpoint(self.ckpt_dir / CHECKPOINT_NAME, self.state_dict())
            self.log.write("checkpoint", step=self.step, epoch=self.epoch, path=str(path))
        barrier()
        return path

    def improves(self, result: EvalResult | None) -> bool:
        """Whether ``result``'s mean top-1 over switches beats the best so far (then it is the best)."""
        if result is None:
            return False
        score = sum(r.top1 for r in result.rows) / len(result.rows)
        if self.best is not None and score <= self.best:
            return False
        self.best = score
        return True

    def keep_best(self, checkpoint: Path | None) -> None:
        """Copy the checkpoint just written (at the best validation so far) to BEST_NAME."""
        if checkpoint is None:
            return
        best = checkpoint.with_name(BEST_NAME)
        tmp = best.with_name(f".{BEST_NAME}.tmp")
        shutil.copyfile(checkpoint, tmp)
        os.replace(tmp, best)  # readers see the old best or the new one
        self.log.write("best", step=self.step, epoch=self.epoch, mean_top1=self.best, path=str(best))

    def load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location=self.device)
        missing = [k for k in ("model", "optimizer", "scheduler", "scaler", "step", "epoch", "batch", "rng", "data")
                   if k not in state]
        if missing:
            raise SlimifyError(f"cannot resume from {path}: it is not a training-run checkpoint (no {missing[0]!r})")
        state["model"] = strip_wrapper_prefixes(state["model"])  # written by a compiled or DDP model of yours
        check_state_dict(self.model.state_dict(), state["model"], f"checkpoint {path} (resume needs the same "
                         "model and switches)")
        if state["data"]["world"] != self.info.world:
            warnings.warn(f"{path} was written by {state['data']['world']} processes, resuming with "
                          f"{self.info.world}: data order will differ from the original run", stacklevel=3)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.best = state.get("best")
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:
                warnings.warn(f"{path} holds no EMA weights: the average restarts from the resumed weights",
                              stacklevel=3)
                self.ema = SwitchEma(self.model, self.recipe.ema_decay)
        set_rng_state(state["rng"])
        self.log.write("resume", step=self.step, epoch=self.epoch, path=str(path))
