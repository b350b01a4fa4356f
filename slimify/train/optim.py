"""Optimizer and learning-rate schedule from a recipe: weight decay only on weights, warm-up, then
cosine / step / exponential decay, stepped once per optimizer step."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from slimify.train.recipe import Recipe

__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "param_groups"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights (ndim > 1) with decay; norms, biases, other vectors and the tensors a
    timm model lists in ``no_weight_decay()`` (position embeddings, class tokens) without."""
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 and name not in skip else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "adamw":
        betas = tuple(recipe.opt_betas) if recipe.opt_betas is not None else (recipe.momentum, 0.999)
        return torch.optim.AdamW(groups, lr=float(recipe.lr), betas=betas)
    return torch.optim.SGD(groups, lr=float(recipe.lr), momentum=recipe.momentum,
                           nesterov=recipe.nesterov and recipe.momentum > 0)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Multiplier of ``recipe.lr`` at optimizer step ``step`` (0-based)."""
    epoch = step / max(1, steps_per_epoch)
    if recipe.warmup_epochs > 0 and epoch < recipe.warmup_epochs:
        progress = epoch / recipe.warmup_epochs
        return recipe.warmup_factor + (1.0 - recipe.warmup_factor) * progress
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "step":
        return recipe.gamma ** sum(1 for m in recipe.milestones if epoch >= m)
    if recipe.schedule == "exponential":
        return recipe.gamma ** math.floor(epoch)
    total = max(1e-9, recipe.epochs - recipe.warmup_epochs)
    progress = min(1.0, (epoch - recipe.warmup_epochs) / total)
    floor = recipe.min_lr / float(recipe.lr)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int) -> LambdaLR:
    """A per-step LambdaLR; its state (the step count) goes into checkpoints, the function does not."""
    factor: Callable[[int], float] = lambda step: lr_factor(recipe, step, steps_per_epoch)  # noqa: E731
    return LambdaLR(optimizer, factor)
