"""The batch dimension of exported files: dynamic by default (``.pt2`` and ``.onnx`` alike),
static when asked (``batch_size``) or when the model cannot run with any other batch — then
with a note saying why, instead of a wall of exporter output.

    >>> path, note = export_pt2(model, 0.5, "m.pt2")     # note: "dynamic: batch (dim 0 of input)"
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.io import atomic_path, example_input

__all__ = ["export_pt2", "export_onnx", "quiet_native_stderr"]


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hide what exporters print while the block runs — C++ code on file descriptor 2 (TorchScript's
    ONNX exporter), torch's loggers (torch.export's fake tensors log whole tracebacks), warnings —
    so that an error reaches the user as one line of the exception."""
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    torch_logger.setLevel(logging.CRITICAL)
    try:
        fd = os.dup(2)
    except OSError:  # no stderr to hide
        fd = None
    try:
        with tempfile.TemporaryFile() as sink, contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fd is not None:
                sys.stderr.flush()
                os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                if fd is not None:
                    os.dup2(fd, 2)
    finally:
        if fd is not None:
            os.close(fd)
        torch_logger.setLevel(level)


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _plain(model: nn.Module, width: float) -> nn.Module:
    from slimify.export import _plain_eval

    return _plain_eval(model, width)


def _example(model: nn.Module, example: torch.Tensor | None, batch: int) -> torch.Tensor:
    x = example_input(model) if example is None else example
    return x[:1].expand(batch, *x.shape[1:]).contiguous() if x.shape[0] != batch else x


def export_pt2(model: nn.Module, width: float, path: str | Path, example: torch.Tensor | None = None,
               overwrite: bool = False, batch_size: int | None = None) -> tuple[Path, str]:
    """``torch.export`` switch ``width`` to ``path``; batch dimension dynamic unless ``batch_size``
    is given or capture with a dynamic batch fails (then static, said in the note). Returns
    (path, a note naming the dynamic dimensions)."""
    plain = _plain(model, width)
    note = None
    program = None
    if batch_size is None:
        x = _example(model, example, 2)  # batch 1 would be specialised to a constant
        try:
            with quiet_native_stderr():
                program = torch.export.export(plain, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
            note = "dynamic: batch (dim 0 of the input)"
        except Exception as e:
            reason = _first_line(e)
            batch_size = 1
            note = f"static batch 1: a dynamic batch is impossible for this model ({reason[:160]})"
    if program is None:
        x = _example(model, example, batch_size)
        try:
            with quiet_native_stderr():
                program = torch.export.export(plain, (x,))
        except Exception as e:
            raise SlimifyError(f"torch.export could not capture {type(plain).__name__} at width {width:g}: "
                               f"{_first_line(e)}") from e
        note = note or f"static batch {batch_size}, no dynamic dimensions"
    with atomic_path(path, overwrite) as tmp:
        torch.export.save(program, str(tmp))
    return Path(path), note


def _onnx_file(plain: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None
    with quiet_native_stderr():
        torch.onnx.export(plain, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["output"], dynamic_axes=axes)


def export_onnx(model: nn.Module, width: float, path: str | Path, example: torch.Tensor | None = None,
                overwrite: bool = False, opset: int = 17, check: bool = True,
                batch_size: int | None = None) -> tuple[Path, str]:
    """ONNX export of switch ``width`` (see :func:`slimify.export.to_onnx`). With a dynamic batch
    the file is also run at another batch size; if that fails or differs, the model cannot have a
    dynamic batch (a size baked into its graph) and is exported with a static one, said in the note."""
    from slimify.export import check_onnx

    plain = _plain(model, width)
    with atomic_path(path, overwrite) as tmp:
        note = None
        if batch_size is None:
            x = _example(model, example, 1)
            try:
                _onnx_file(plain, x, tmp, opset, dynamic=True)
                if check:
                    check_onnx(tmp, plain, x)
                with quiet_native_stderr():  # onnxruntime logs the failure of a baked batch size
                    check_onnx(tmp, plain, _example(model, example, 3))  # another batch size
                note = "dynamic: batch (dim 0 of input and output)"
            except Exception as e:
                note = f"static batch 1: a dynamic batch is impossible for this model ({_first_line(e)[:160]})"
                batch_size = 1
        if batch_size is not None:
            x = _example(model, example, batch_size)
            try:
                _onnx_file(plain, x, tmp, opset, dynamic=False)
            except Exception as e:
                raise SlimifyError(f"ONNX export failed for {type(plain).__name__} at width {width:g}: "
                                   f"{_first_line(e)}") from e
            if check:
                check_onnx(tmp, plain, x)
            note = note or f"static batch {batch_size}, no dynamic dimensions"
    return Path(path), note
