"""Accuracy per width for profiles and plots: from evaluation results stored in a ``.slim`` file
(``finetune`` records its final evaluation there) or from a file the user gives
(``slimify eval --json`` output, or a plain ``{"0.5": 71.2, …}`` mapping).

    >>> attach_accuracy(slimify.profile(model), model, "eval.json").plot("front.png")
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.state import get_state

__all__ = ["EVALUATION_KEY", "record_evaluation", "stored_accuracy", "read_accuracy", "attach_accuracy"]

EVALUATION_KEY = "evaluation"  # .slim config key (ConversionRecord.evaluation): {"data": str, "top1": {width: percent}}


def _key(w: Any) -> float | str:
    """A width as a number, or a named width configuration as its name."""
    try:
        return float(w)
    except (TypeError, ValueError):
        return str(w)


def record_evaluation(model: nn.Module, top1: dict[Any, float], data: str) -> None:
    """Keep top-1 accuracy per width (or configuration name) on the model, so that ``slimify.save`` writes it."""
    get_state(model).record.evaluation = {
        "data": str(data), "top1": {f"{w:g}" if isinstance(w, float) else str(w): float(a) for w, a in top1.items()}}


def stored_accuracy(model: nn.Module) -> dict[float | str, float] | None:
    """The top-1 per width recorded on ``model`` (by finetune, kept in its ``.slim``), if any."""
    stored = get_state(model).record.evaluation
    if not isinstance(stored, dict) or not isinstance(stored.get("top1"), dict):
        return None
    return {_key(w): float(a) for w, a in stored["top1"].items()}


def read_accuracy(path: str | Path) -> dict[float | str, float]:
    """Accuracy per width (or configuration name) from ``path``: a list of rows with ``width`` and
    ``top1`` (``slimify eval --json``), or a mapping width → accuracy (optionally under ``"top1"``)."""
    try:
        data: Any = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SlimifyError(f"cannot read accuracy file {path}: {str(e).splitlines()[0]}") from None
    try:
        if isinstance(data, dict) and isinstance(data.get("top1"), dict):
            data = data["top1"]
        if isinstance(data, list):
            return {_key(row["width"]): float(row["top1"]) for row in data}
        if isinstance(data, dict):
            return {_key(w): float(a) for w, a in data.items()}
    except (TypeError, KeyError, ValueError):
        pass
    raise SlimifyError(f"{path}: expected 'slimify eval --json' output (rows with width and top1) or a mapping "
                       'such as {"0.5": 71.2, "1.0": 76.1}')


def attach_accuracy(result: Any, model: nn.Module, path: str | Path | None = None) -> Any:
    """Fill every profiled row's ``accuracy`` from ``path`` or, without it, from what ``model``
    has stored; a width missing from a given file is an error. Returns ``result``."""
    accuracy = read_accuracy(path) if path is not None else stored_accuracy(model)
    if accuracy is None:
        return result
    for row in result.rows:
        if getattr(row, "config", ""):  # a named configuration: by its name (its width is a kept fraction)
            row.accuracy = accuracy.get(row.config)
            continue
        match = [a for w, a in accuracy.items() if isinstance(w, float) and abs(w - row.width) < 1e-6]
        if not match and path is not None:
            raise SlimifyError(f"{path} has no accuracy for width {row.width:g} (it has "
                               f"{', '.join(f'{w:g}' for w in sorted(w for w in accuracy if isinstance(w, float)))})")
        row.accuracy = match[0] if match else None
    return result
