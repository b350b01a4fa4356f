"""The data config is part of the model: crop percentage, mean, std and interpolation of the
preprocessing (names and meaning as in timm's validate.py / train.py), recorded on a slimmable
model (``ConversionRecord.data_config``, kept in its ``.slim`` file and its checkpoint's spec) so
that every later command preprocesses as the model was trained.

    >>> cfg = DataConfig(crop_pct=1.0, mean=(0.5,), std=(0.5,))
    >>> resolved_data_config(model, (3, 32, 32), cfg)["crop_pct"]   # given > recorded > timm's > defaults
    1.0
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.state import get_state, is_slimmable

__all__ = ["DataConfig", "INTERPOLATIONS", "DEFAULTS", "IMAGENET_MEAN", "IMAGENET_STD", "check_data_config", "recorded_data_config",
           "record_data_config", "resolved_data_config", "record_resolved", "describe_data_config"]

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


def recorded_data_config(model: nn.Module) -> DataConfig | None:
    """The config recorded on a slimmable model (by finetune, or a command given one), if any."""
    if not is_slimmable(model):
        return None
    data = get_state(model).record.data_config
    return DataConfig.from_dict(data, f"{type(model).__name__}'s recorded data config") if data else None


def record_data_config(model: nn.Module, cfg: DataConfig) -> None:
    """Keep ``cfg`` (over what was recorded) on ``model``; ``slimify.save`` writes it."""
    merged = cfg.over(recorded_data_config(model))
    get_state(model).record.data_config = merged.given() or None


def _own_config(model: nn.Module) -> dict[str, Any]:
    """timm's pretrained_cfg values of the model, if it has one (its crop mode too)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    return {k: cfg[k] for k in ("crop_pct", "mean", "std", "interpolation", "crop_mode") if cfg.get(k)}


def resolved_data_config(model: nn.Module, size: tuple[int, int, int], given: DataConfig | None = None) -> dict[str, Any]:
    """``input_size``, ``crop_pct``, ``mean``, ``std``, ``interpolation`` (timm's data-config keys;
    ``crop_mode`` too where timm's pretrained config has one)
    for ``model`` at ``size``: each from ``given``, else recorded on the model, else the model's own
    (timm's pretrained_cfg), else :data:`DEFAULTS`; one mean or std value serves every channel."""
    chosen = (given or DataConfig()).over(recorded_data_config(model))
    check_data_config(chosen, size[0])
    out: dict[str, Any] = {"input_size": tuple(size), **DEFAULTS, **_own_config(model), **chosen.given()}
    for key in ("mean", "std"):
        values = tuple(float(v) for v in out[key])
        out[key] = values * size[0] if len(values) == 1 else values
    if len(out["mean"]) != size[0] or len(out["std"]) != size[0]:  # the model's own config, other channels
        raise SlimifyError(f"{type(model).__name__}'s mean/std have {len(out['mean'])} values but the input has "
                           f"{size[0]} channels: give --mean and --std")
    return out


def describe_data_config(model: nn.Module, size: tuple[int, int, int] | None = None) -> str:
    """One line: the config ``model`` preprocesses with and where it comes from."""
    size = size or (3, 224, 224)
    recorded = recorded_data_config(model)
    cfg = resolved_data_config(model, size)
    source = "recorded" if recorded else "the model's own (timm)" if _own_config(model) else "defaults"
    mean, std = (", ".join(f"{v:g}" for v in cfg[k]) for k in ("mean", "std"))
    return (f"data config ({source}): crop_pct {cfg['crop_pct']:g}, mean {mean}, std {std}, "
            f"interpolation {cfg['interpolation']}")


def record_resolved(model: nn.Module, size: tuple[int, int, int], given: DataConfig | None = None) -> dict[str, Any]:
    """Record on ``model`` the whole config it is trained with at ``size`` (what finetune keeps:
    later commands then preprocess the same way, whatever the defaults become); returns it."""
    cfg = resolved_data_config(model, size, given)
    kept = DataConfig(crop_pct=cfg["crop_pct"], mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                      interpolation=cfg["interpolation"])
    record_data_config(model, kept)
    return kept.given()
