"""What the exporters of :mod:`slimify.deploy.extract` share to make the batch dimension of a
file dynamic by default (``.pt2`` and ``.onnx`` alike) or static when asked or when the model
cannot run with any other batch: an example batch of a given size, the ONNX call with or without
a dynamic axis, and a way to keep exporter output off the terminal so that a failure reaches the
user as one line (``export_pt2`` / ``export_onnx`` there return that line as a note).
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

from slimify.store.slimfile import example_input

__all__ = ["quiet_native_stderr", "first_line", "batch_of", "onnx_file"]


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


def first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def batch_of(model: nn.Module, example: torch.Tensor | None, batch: int) -> torch.Tensor:
    """``example`` (default: the model's recorded input) with ``batch`` rows, repeating its first."""
    x = example_input(model) if example is None else example
    return x[:1].expand(batch, *x.shape[1:]).contiguous() if x.shape[0] != batch else x


def onnx_file(plain: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    """Write ``plain`` to ONNX with inputs named ``input``/``output``, batch dynamic or not."""
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None
    with quiet_native_stderr():
        torch.onnx.export(plain, (x,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["output"], dynamic_axes=axes)
