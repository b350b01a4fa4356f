"""Mixup / CutMix through timm's ``Mixup``: mixed images and soft targets (label smoothing folded
in). The widest switch learns from the soft targets; narrower switches learn from them too
(``narrow_loss: labels``) or from the widest switch's logits on the same mixed images (in-place
distillation), so mixing and distillation combine without special cases."""
from __future__ import annotations

from typing import Any

from slimify.train.recipe import Recipe

__all__ = ["uses_mixing", "build_mixup", "smoothing"]


def uses_mixing(recipe: Recipe) -> bool:
    return recipe.mixup > 0 or recipe.cutmix > 0


def smoothing(recipe: Recipe) -> float:
    """Label smoothing: timm's ``smoothing`` key, else the older ``label_smoothing``."""
    return recipe.smoothing if recipe.smoothing is not None else recipe.label_smoothing


def build_mixup(recipe: Recipe, num_classes: int) -> Any:
    """timm's Mixup for the recipe (call it as ``images, targets = mix(images, labels)``)."""
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, prob=recipe.mixup_prob,
                 switch_prob=recipe.mixup_switch_prob, mode=recipe.mixup_mode, label_smoothing=smoothing(recipe),
                 num_classes=num_classes)
