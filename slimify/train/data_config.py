"""The data config is part of the model: crop percentage, mean, std and interpolation of the
preprocessing (:class:`slimify.preprocess.DataConfig`; names and meaning as in timm's
validate.py / train.py), recorded on a slimmable
model (``ConversionRecord.data_config``, kept in its ``.slim`` file and its checkpoint's spec) so
that every later command preprocesses as the model was trained.

    >>> cfg = DataConfig(crop_pct=1.0, mean=(0.5,), std=(0.5,))
    >>> resolved_data_config(model, (3, 32, 32), cfg)["crop_pct"]   # given > recorded > timm's > defaults
    1.0
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.preprocess import DEFAULTS, DataConfig, check_data_config
from slimify.state import get_state, is_slimmable

__all__ = ["DataConfig", "recorded_data_config", "record_data_config", "resolved_data_config", "record_resolved",
           "describe_data_config"]


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
    try:
        cfg = resolved_data_config(model, size)
    except SlimifyError as e:  # e.g. a timm model's 3-channel statistics on a 1-channel input
        return f"data config: {e}"
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
