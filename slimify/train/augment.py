"""Training augmentation from a recipe's timm-named keys (``auto_augment``, ``reprob``, ``remode``,
``color_jitter``, ``scale``, ``ratio``, ``hflip``, ``vflip``, ``no_aug``), as keyword arguments of
``timm.data.create_transform``: the image-folder pipeline slimify builds
(:func:`slimify.train.data.image_folder`) applies them; in-memory sets (digits, IDX) honour ``no_aug``."""
from __future__ import annotations

from typing import Any

from slimify.train.recipe import Recipe

__all__ = ["augment_args"]


def augment_args(recipe: Recipe) -> dict[str, Any]:
    """``create_transform`` arguments the recipe sets (empty: the model's default training transform)."""
    args: dict[str, Any] = {}
    if recipe.auto_augment is not None:
        args["auto_augment"] = recipe.auto_augment
    if recipe.reprob > 0:
        args.update(re_prob=recipe.reprob, re_mode=recipe.remode)
    if recipe.color_jitter is not None:
        args["color_jitter"] = recipe.color_jitter
    for key, default in (("hflip", 0.5), ("vflip", 0.0), ("no_aug", False)):  # passed only where they differ
        if getattr(recipe, key) != default:
            args[key] = getattr(recipe, key)
    for key in ("scale", "ratio"):
        if getattr(recipe, key) is not None:
            args[key] = tuple(getattr(recipe, key))
    return args
