"""Export formats by file suffix: one registry entry each (suffix, help, writer). Imports no
torch, so the CLI lists the suffixes at once; a writer imports what it needs when it runs. A new
format is one decorated function here.

A writer takes ``(model, width, path, example, overwrite)`` (a converted model, a width or a
named width configuration of it, where to write, an example input batch) and returns how to load the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimify.registry import Registry

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

__all__ = ["FORMATS", "write_width"]

FORMATS = Registry("export format", key=str.lower)


@FORMATS.register(".pt", help="the plain module (torch.save)")
def torch_save(model: nn.Module, width: Any, path: Path, example: torch.Tensor, overwrite: bool) -> str:
    import torch

    from slimify.deploy.extract import export
    from slimify.store.slimfile import atomic_path

    with atomic_path(path, overwrite) as tmp:
        torch.save(export(model, width).eval(), tmp)
    return "torch.save of the plain module; load with torch.load(path, weights_only=False)"


@FORMATS.register(".pt2", help="a torch.export program")
def torch_export(model: nn.Module, width: Any, path: Path, example: torch.Tensor, overwrite: bool) -> str:
    from slimify.deploy.extract import to_torch_export

    to_torch_export(model, width, path, example, overwrite=overwrite)
    return "torch.export program; load with torch.export.load(path).module()"


@FORMATS.register(".onnx", help="ONNX opset 17, dynamic batch, checked with onnxruntime")
def onnx(model: nn.Module, width: Any, path: Path, example: torch.Tensor, overwrite: bool) -> str:
    from slimify.deploy.extract import to_onnx

    to_onnx(model, width, path, example, overwrite=overwrite)
    return f"ONNX opset 17, dynamic batch, checked with onnxruntime on {list(example.shape)}"


def write_width(model: nn.Module, width: Any, path: str | Path, example: Any = None, overwrite: bool = False) -> str:
    """Export ``width`` (a width or a configuration's name) of ``model`` to ``path`` in the format its suffix names; returns a
    one-line summary. ``example`` defaults to a batch of one at the model's recorded input shape."""
    from slimify.deploy.extract import active_params
    from slimify.store.slimfile import example_input

    path = Path(path)
    writer = FORMATS.get(path.suffix)
    example = example_input(model) if example is None else example
    how = writer.fn(model, width, path, example, overwrite)
    what = f"configuration {width!r}" if isinstance(width, str) else f"width {width:g}"
    return f"wrote {path}: {what}, {active_params(model, width):,} parameters ({how})"
