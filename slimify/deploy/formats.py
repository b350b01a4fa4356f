"""Export formats by file suffix: one registry entry each (suffix, help, writer). Imports no
torch, so the CLI lists the suffixes at once; a writer imports what it needs when it runs. A new
format is one decorated function here.

A writer takes ``(model, width, path, example, overwrite)`` (a converted model, a width or a
named width configuration of it, where to write, an example call — ``ExampleCall``, one or several
inputs) and returns how to load
the file. A format registered with ``batch_size=True`` also takes ``batch_size`` (a static batch;
its default is a dynamic one). ``ALL_WIDTHS`` holds the formats that store every switch in one
file, weights once: their writers take ``(model, path, example, overwrite)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimify.errors import SlimifyError
from slimify.registry import Registry

if TYPE_CHECKING:
    import torch.nn as nn

    from slimify.analysis.example_inputs import ExampleCall

__all__ = ["FORMATS", "ALL_WIDTHS", "write_width", "write_all_widths"]

FORMATS = Registry("export format", key=str.lower)
ALL_WIDTHS = Registry("all-widths export format", key=str.lower)


@FORMATS.register(".pt", help="the plain module (torch.save)")
def torch_save(model: nn.Module, width: Any, path: Path, example: ExampleCall, overwrite: bool) -> str:
    import torch

    from slimify.deploy.extract import export
    from slimify.store.atomic import atomic_path

    with atomic_path(path, overwrite) as tmp:
        torch.save(export(model, width).eval(), tmp)
    return "torch.save of the plain module; load with torch.load(path, weights_only=False)"


@FORMATS.register(".pt2", help="a torch.export program, dynamic batch", batch_size=True)
def torch_export(model: nn.Module, width: Any, path: Path, example: ExampleCall, overwrite: bool,
                 batch_size: int | None = None) -> str:
    from slimify.deploy.extract import export_pt2

    _, dims = export_pt2(model, width, path, example, overwrite=overwrite, batch_size=batch_size)
    return f"torch.export program, {dims}; load with torch.export.load(path).module()"


@FORMATS.register(".onnx", help="ONNX opset 17, dynamic batch, checked with onnxruntime", batch_size=True)
def onnx(model: nn.Module, width: Any, path: Path, example: ExampleCall, overwrite: bool,
         batch_size: int | None = None) -> str:
    from slimify.deploy.extract import export_onnx

    _, dims = export_onnx(model, width, path, example, overwrite=overwrite, batch_size=batch_size)
    return f"ONNX opset 17, {dims}; checked with onnxruntime"


@ALL_WIDTHS.register(".onnx", help="one ONNX file; a second input 'width' (float scalar) picks the switch")
def onnx_all_widths(model: nn.Module, path: Path, example: ExampleCall, overwrite: bool) -> str:
    from slimify.deploy.export_all_widths import to_onnx_all_widths
    from slimify.deploy.export_batch import input_names
    from slimify.state import switches

    info = to_onnx_all_widths(model, path, example, overwrite=overwrite)
    widths = ", ".join(f"{w:g}" for w in switches(model))
    inputs = ", ".join(f"'{n}' {list(t.shape)}" for n, t in zip(input_names(model, example), example.tensors()))
    return (f"wrote {path}: widths {widths} in one ONNX file (inputs {inputs} with a dynamic "
            f"batch and 'width', a float scalar; {info.shared_bytes / 1e6:.1f} MB of weights stored once, "
            f"{info.private_bytes / 1e6:.2f} MB private to one width; checked with onnxruntime at every width)")


@ALL_WIDTHS.register(".pt2", help="one torch.export program, forward(x, width); torch.cond over the switches")
def torch_export_all_widths(model: nn.Module, path: Path, example: ExampleCall, overwrite: bool) -> str:
    from slimify.deploy.export_all_widths_pt2 import to_torch_export_all_widths

    return to_torch_export_all_widths(model, path, example, overwrite=overwrite)


def write_width(model: nn.Module, width: Any, path: str | Path, example: Any = None, overwrite: bool = False,
                batch_size: int | None = None) -> str:
    """Export ``width`` (a switch, a uniform width in range or a configuration's name) of ``model`` to ``path`` in the format its suffix names; returns a
    one-line summary. ``example`` (one input, a tuple of inputs or an ``ExampleCall``) defaults to
    the call the model was converted on, a batch of one;
    ``batch_size`` asks a format that has a batch dimension for a static one."""
    from slimify.analysis.example_inputs import ExampleCall
    from slimify.deploy.extract import active_params, width_label
    from slimify.state import slot_of
    from slimify.store.slimfile import example_call

    path = Path(path)
    slot_of(model, width)  # a width out of range or an unknown name: one line, before writing anything
    writer = FORMATS.get(path.suffix)
    extra: dict[str, int] = {}
    if batch_size is not None:
        if not writer.options.get("batch_size"):
            batched = ", ".join(FORMATS.names(lambda e: bool(e.options.get("batch_size"))))
            raise SlimifyError(f"a static batch size applies to {batched} files, not {writer.name}")
        extra["batch_size"] = batch_size
    example = example_call(model) if example is None else ExampleCall.of(example)
    how = writer.fn(model, width, path, example, overwrite, **extra)
    return f"wrote {path}: {width_label(width)}, {active_params(model, width):,} parameters ({how})"


def write_all_widths(model: nn.Module, path: str | Path, example: Any = None, overwrite: bool = False) -> str:
    """Export every switch of ``model`` to one file in the all-widths format its suffix names
    (``ALL_WIDTHS``); returns a one-line summary."""
    from slimify.analysis.example_inputs import ExampleCall
    from slimify.store.slimfile import example_call

    path = Path(path)
    writer = ALL_WIDTHS.get(path.suffix)
    return writer.fn(model, path, example_call(model) if example is None else ExampleCall.of(example), overwrite)
