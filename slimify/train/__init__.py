"""Fine-tuning, BN calibration and evaluation of slimmable models (all switches trained jointly).

    >>> from slimify.train import finetune, calibrate_bn, evaluate, digits
    >>> finetune(model, digits("train"), "demo", out_dir="run")
    >>> calibrate_bn(model, digits("train"), batches=10)
    >>> print(evaluate(model, digits("val")))
"""
from __future__ import annotations

from slimify.store.digits_net import DigitsNet
from slimify.train.calibrate import calibrate_bn
from slimify.train.checkpoint import load_checkpoint, save_checkpoint
from slimify.train.data import digits, image_folder, model_transform
from slimify.train.evaluate import EvalResult, SwitchMetrics, evaluate
from slimify.train.recipe import Recipe, load_recipe, recipe_names
from slimify.train.run import TrainResult, finetune

__all__ = [
    "finetune", "calibrate_bn", "evaluate",
    "TrainResult", "EvalResult", "SwitchMetrics", "Recipe", "load_recipe", "recipe_names",
    "digits", "image_folder", "model_transform", "DigitsNet",
    "save_checkpoint", "load_checkpoint",
]
