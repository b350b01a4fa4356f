"""The preprocessing settings a model carries (crop percentage, mean, std, interpolation; names
and meaning as in timm's validate.py / train.py) and their checks. Plain data, no torch: the CLI
builds its options from it without importing torch (``slimify --help`` stays fast); resolving
and recording them on a model is :mod:`slimify.train.data_config`.

    >>> DataConfig(crop_pct=1.0, mean=(0.5,)).given()
    {'crop_pct': 1.0, 'mean': [0.5]}
    >>> DataConfig(crop_pct=1.5)
    SlimifyError: crop percentage must lie in (0, 1] (1: no crop), got 1.5
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from slimify.errors import SlimifyError

__all__ = ["DataConfig", "INTERPOLATIONS", "DEFAULTS", "IMAGENET_MEAN", "IMAGENET_STD", "check_data_config",
           "own_input_size"]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's and torchvision's names
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULTS: dict[str, Any] = {  # a model without its own (timm's pretrained_cfg) or a recorded config
    "crop_pct": 0.875, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "interpolation": "bilinear"}


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing settings; a field left None comes from the model (recorded, else its own)."""

    crop_pct: float | None = None  # evaluation: resize to size / crop_pct, then center-crop the size
    mean: tuple[float, ...] | None = None  # per channel (one value: every channel)
    std: tuple[float, ...] | None = None  # per channel, each > 0
    interpolation: str | None = None  # one of INTERPOLATIONS

    def given(self) -> dict[str, Any]:
        """The fields that are set, as plain JSON-ready data."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v is not None}

    def over(self, base: DataConfig | None) -> DataConfig:
        """This config's fields, the unset ones taken from ``base``."""
        if base is None:
            return self
        return DataConfig(**{f.name: getattr(base if getattr(self, f.name) is None else self, f.name)
                             for f in fields(self)})

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "data config") -> DataConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SlimifyError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
        try:
            return cls(crop_pct=None if data.get("crop_pct") is None else float(data["crop_pct"]),
                       mean=None if data.get("mean") is None else tuple(float(v) for v in data["mean"]),
                       std=None if data.get("std") is None else tuple(float(v) for v in data["std"]),
                       interpolation=None if data.get("interpolation") is None else str(data["interpolation"]))
        except (TypeError, ValueError):
            raise SlimifyError(f"{where}: crop_pct must be a number, mean and std lists of numbers") from None

    def __post_init__(self) -> None:
        check_data_config(self)


def check_data_config(cfg: DataConfig, channels: int | None = None) -> None:
    """One SlimifyError for a crop percentage outside (0, 1], a mean or std of the wrong length
    (one value, or one per channel), a std that is not positive or an unknown interpolation."""
    if cfg.crop_pct is not None and not (0 < cfg.crop_pct <= 1):
        raise SlimifyError(f"crop percentage must lie in (0, 1] (1: no crop), got {cfg.crop_pct:g}")
    for name, values in (("mean", cfg.mean), ("std", cfg.std)):
        if values is None:
            continue
        if not values or any(not math.isfinite(v) for v in values):
            raise SlimifyError(f"{name} must be finite numbers, one or one per channel, got {list(values)}")
        if channels is not None and len(values) not in (1, channels):
            raise SlimifyError(f"{name} has {len(values)} values but the model takes {channels} channels: give "
                               f"one value or {channels}")
    if cfg.std is not None and any(v <= 0 for v in cfg.std):
        raise SlimifyError(f"std must be positive (it divides), got {list(cfg.std)}")
    if cfg.interpolation is not None and cfg.interpolation not in INTERPOLATIONS:
        raise SlimifyError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {cfg.interpolation!r}")


def own_input_size(model: Any) -> tuple[int, int, int]:
    """The model's own input size without the batch (timm's pretrained_cfg), else 3×224²."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))  # type: ignore[return-value]
