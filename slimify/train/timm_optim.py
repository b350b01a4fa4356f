"""Optimizer, learning rate and schedule from timm's toolbox (``create_optimizer_v2``,
``create_scheduler_v2``, timm's batch-size scaling rule), for recipes that use timm's key names
(``opt``, ``layer_decay``, ``sched``, ``lr_base``); the older keys keep their own path in
:mod:`slimify.train.optim`, so old recipes and their checkpoints resume unchanged.

    >>> r = load_recipe({"opt": "adamw", "sched": "cosine", "lr_base": 5e-4, "batch_size": 128})
    >>> global_lr(r, world=4)          # sqrt scaling for Adam-like optimizers, as timm's train.py
    0.0007071067811865476
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.train.optim import build_optimizer, build_scheduler
from slimify.train.recipe import Recipe

__all__ = ["global_lr", "create_optimizer", "create_schedule", "TimmSchedule", "uses_timm_optimizer"]


def global_lr(recipe: Recipe, world: int) -> float:
    """``recipe.lr`` if given, else timm's rule: ``lr_base`` x (global batch / ``lr_base_size``),
    square-rooted for Adam/LAMB-like optimizers unless ``lr_base_scale`` says otherwise."""
    if recipe.lr is not None:
        return float(recipe.lr)
    ratio = recipe.batch_size * world * recipe.accum_steps / recipe.lr_base_size
    scale = recipe.lr_base_scale or ("sqrt" if any(k in _opt_name(recipe) for k in ("ada", "lamb")) else "linear")
    return recipe.lr_base * (math.sqrt(ratio) if scale == "sqrt" else ratio)


def _opt_name(recipe: Recipe) -> str:
    """timm's name for the recipe's optimizer (the older ``optimizer``/``nesterov`` keys mapped)."""
    if recipe.opt is not None:
        return recipe.opt.lower()
    if recipe.optimizer == "adamw":
        return "adamw"
    return "sgd" if recipe.nesterov and recipe.momentum > 0 else "momentum"  # timm's sgd is Nesterov


def uses_timm_optimizer(recipe: Recipe) -> bool:
    return recipe.opt is not None or recipe.layer_decay is not None


def create_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` (no weight decay on norms, biases and the model's
    ``no_weight_decay()`` tensors; layer-wise decay) when the recipe uses timm's keys, else the
    older two-group SGD/AdamW. ``recipe.lr`` must be resolved (see :func:`global_lr`)."""
    if not uses_timm_optimizer(recipe):
        return build_optimizer(model, recipe)
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {}
    if recipe.opt_eps is not None:
        kwargs["eps"] = recipe.opt_eps
    if recipe.opt_betas is not None:
        kwargs["betas"] = tuple(recipe.opt_betas)
    if recipe.layer_decay is not None and not hasattr(model, "group_matcher"):
        raise SlimifyError(f"layer_decay needs a timm model (one with group_matcher() to number its layers); "
                           f"{type(model).__name__} has none: remove layer_decay from the recipe")
    try:
        return create_optimizer_v2(model, opt=_opt_name(recipe), lr=recipe.lr, weight_decay=recipe.weight_decay,
                                   momentum=recipe.momentum, layer_decay=recipe.layer_decay, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:
        raise SlimifyError(f"timm cannot build optimizer {_opt_name(recipe)!r} with this recipe: {e}") from None


class TimmSchedule:
    """A timm scheduler stepped once per optimizer update, with the small interface the loop and
    checkpoints use (``step``, ``get_last_lr``, ``state_dict``, ``load_state_dict``)."""

    def __init__(self, scheduler: Any, optimizer: torch.optim.Optimizer):
        self.scheduler, self.optimizer, self.updates = scheduler, optimizer, 0
        self.scheduler.step_update(0)

    def step(self) -> None:
        self.updates += 1
        self.scheduler.step_update(self.updates)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "timm": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "updates" not in state:
            raise SlimifyError("the checkpoint's schedule was written by another recipe (no timm 'updates'): "
                               "resume with the recipe the run started with")
        self.scheduler.load_state_dict(state["timm"])
        self.updates = int(state["updates"])
        self.scheduler.step_update(self.updates)


def create_schedule(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> Any:
    """timm's ``create_scheduler_v2`` per update when the recipe names ``sched``; else the older
    per-step LambdaLR, on which layer-decay scales (``lr_scale``) are applied once up front."""
    if recipe.sched is None:
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)  # timm's schedulers do this per update
        return build_scheduler(optimizer, recipe, steps_per_epoch)
    from timm.scheduler import create_scheduler_v2

    warmup_lr = recipe.warmup_lr if recipe.warmup_lr is not None else recipe.warmup_factor * float(recipe.lr)
    milestones = recipe.decay_milestones if recipe.decay_milestones is not None else recipe.milestones
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=recipe.sched, num_epochs=recipe.epochs, decay_epochs=recipe.decay_epochs,
        decay_milestones=milestones or [recipe.epochs + 1], decay_rate=recipe.decay_rate if recipe.decay_rate
        is not None else recipe.gamma, min_lr=recipe.min_lr, warmup_lr=warmup_lr,
        warmup_epochs=recipe.warmup_epochs, step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    return TimmSchedule(scheduler, optimizer)
