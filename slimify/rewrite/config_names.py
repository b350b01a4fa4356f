"""Named width configurations: the names a model knows (``slimify.configs``, ``store_config``),
how they are listed, and how they are saved in and read back from a ``.slim`` file. What a
configuration keeps and how it is served is :mod:`slimify.rewrite.config_slots`.
"""
from __future__ import annotations

import re
from typing import Any

import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.rewrite.config_slots import (
    calibrated_order,
    calibration_slot,
    channels_of,
    config_counts,
    config_slot,
    describe,
    names_of,
)
from slimify.state import get_state

__all__ = ["configs", "store_config", "check_name", "remove_config", "configs_to_json", "configs_from_json", "configs_table"]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def configs(model: nn.Module) -> dict[str, float | dict[int, int]]:
    """The named configurations: every switch (as a float, named like ``"0.5"``) and the ones
    added with ``slimify.add_config``, calibration or search (floats or {group: channels})."""
    state = get_state(model)
    out: dict[str, float | dict[int, int]] = {f"{w:g}": w for w in state.switches}
    out.update({k: (dict(v) if isinstance(v, dict) else v) for k, v in names_of(state).items()})
    return out


def check_name(model: nn.Module, name: str, replace: bool = False) -> None:
    """Refuse a name that is malformed, a switch's, or taken (unless ``replace``)."""
    state = get_state(model)
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SlimifyError(f"a configuration name is 1-64 letters, digits, '.', '_', '+' or '-' starting with a "
                           f"letter or digit; got {name!r}")
    switch_names = {f"{w:g}" for w in state.switches}
    if name in switch_names:
        raise SlimifyError(f"{name!r} is a switch of this model: choose another name")
    if name in names_of(state) and not replace:
        raise SlimifyError(f"a configuration named {name!r} exists: remove it first or pass replace=True")


def store_config(model: nn.Module, name: str, value: Any, replace: bool = False) -> str:
    """Name a configuration (a uniform width or {group: channels}); its cuts are computed now (it
    must be servable), it is saved with the model and known to ``width``, ``export``, ``profile``
    and ``pick``. ``slimify.add_config`` (:mod:`slimify.selection.config_proof`) also runs it first;
    this one stores without running (``load`` restores configurations proven when added)."""
    state = get_state(model)
    check_name(model, name, replace)
    if isinstance(value, str):
        value = config_counts(model, value)[2]
    if isinstance(value, dict):
        value = channels_of(model, value)
    else:
        config_counts(model, value)
        value = float(value)
    previous = names_of(state).get(name)
    names_of(state)[name] = value
    try:
        index = config_slot(model, name)  # fails here, not later, when it cannot be served
        if index >= len(state.switches):
            state.slots[index - len(state.switches)].label = repr(name)
    except SlimifyError:
        names_of(state).pop(name)
        if previous is not None:
            names_of(state)[name] = previous
        raise
    return name


def remove_config(model: nn.Module, name: str) -> None:
    names = names_of(get_state(model))
    if name not in names:
        raise SlimifyError(f"no configuration named {name!r}")
    del names[name]


def configs_to_json(model: nn.Module) -> dict[str, Any]:
    """Named configurations for a ``.slim`` config: {name: {"width"| "channels", "calibrated"}}."""
    out = {}
    for name, value in names_of(get_state(model)).items():
        calibrated = calibrated_order(model, value)
        entry: dict[str, Any] = {"width": value} if isinstance(value, float) else \
            {"channels": {str(g): c for g, c in sorted(value.items())}}
        out[name] = {**entry, "calibrated": calibrated}
    return out


def configs_from_json(model: nn.Module, data: Any, where: str) -> None:
    """Register saved configurations and their calibrated statistics (in saved order) before the
    state dict is loaded."""
    if not isinstance(data, dict):
        raise SlimifyError(f"{where}: 'configs' must be a mapping of name → configuration")
    calibrated: list[tuple[int, str]] = []
    for name, entry in data.items():
        try:
            value = float(entry["width"]) if "width" in entry else {int(g): int(c) for g, c in entry["channels"].items()}
            order = entry.get("calibrated")
        except (TypeError, KeyError, ValueError, AttributeError):
            raise SlimifyError(f"{where}: configuration {name!r} is malformed") from None
        store_config(model, name, value)
        if order is not None:
            calibrated.append((int(order), name))
    for _, name in sorted(calibrated):
        calibration_slot(model, name)


def configs_table(model: nn.Module) -> str:
    """Named configurations beyond the switches, one line each ("" when there are none)."""
    names = names_of(get_state(model))
    lines = [f"  {name}: {describe(value)}" + (" (calibrated BN)" if calibrated_order(model, value) is not None else "")
             for name, value in names.items()]
    return "\n".join(["named width configurations (group: channels):", *lines]) if lines else ""
