"""Recipe keys for the train transform, named as in timm's train.py: they reach the transform slimify
builds, default to timm's values, and bad values are one clear error."""
from __future__ import annotations

import pytest
import timm
import torch

from slimify import SlimifyError
from slimify.train.augment import augment_args
from slimify.train.data import model_transform
from slimify.train.recipe import load_recipe
from slimify.train.resolve import resolve_data


def _ops(transform: object) -> dict[str, object]:
    return {type(t).__name__: t for t in transform.transforms}  # type: ignore[attr-defined]


def test_defaults_change_nothing() -> None:
    assert augment_args(load_recipe(None)) == {}


def test_keys_reach_timms_transform() -> None:
    r = load_recipe(None, scale=[0.6, 1.0], ratio=[0.9, 1.1], hflip=0.0, vflip=0.25, color_jitter=0.0)
    args = augment_args(r)
    assert args == {"scale": (0.6, 1.0), "ratio": (0.9, 1.1), "hflip": 0.0, "vflip": 0.25, "color_jitter": 0.0}
    ops = _ops(model_transform(timm.create_model("resnet10t", num_classes=3), True, input_size=32, augment=args))
    crop = ops["RandomResizedCropAndInterpolation"]
    assert crop.scale == (0.6, 1.0) and crop.ratio == (0.9, 1.1)  # type: ignore[attr-defined]
    assert "RandomHorizontalFlip" not in ops and ops["RandomVerticalFlip"].p == 0.25  # type: ignore[attr-defined]


def test_no_aug_trains_on_plain_images() -> None:
    args = augment_args(load_recipe(None, no_aug=True))
    ops = _ops(model_transform(timm.create_model("resnet10t", num_classes=3), True, input_size=32, augment=args))
    assert "CenterCrop" in ops and "RandomResizedCropAndInterpolation" not in ops
    digits = resolve_data("digits", torch.nn.Identity(), train=True, augment=args)
    assert not digits.augment and resolve_data("digits", torch.nn.Identity(), train=True).augment


@pytest.mark.parametrize("change, message", [
    ({"scale": [0.0, 1.0]}, "'scale' must be [min, max]"), ({"scale": [0.9, 0.5]}, "'scale' must be [min, max]"),
    ({"scale": [0.5]}, "'scale' must be [min, max]"), ({"ratio": [2.0, 1.0]}, "'ratio' must be [min, max]"),
    ({"hflip": 1.5}, "'hflip' must be in [0, 1]"), ({"vflip": -0.1}, "'vflip' must be in [0, 1]"),
    ({"no_aug": "yes"}, "'no_aug' must be bool"),
])
def test_bad_values_are_one_error(change: dict, message: str) -> None:
    with pytest.raises(SlimifyError) as e:
        load_recipe(change)
    assert message in str(e.value)
