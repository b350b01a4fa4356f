"""What the exporters of :mod:`slimify.deploy.extract` share to make the batch dimension of a
file dynamic by default (``.pt2`` and ``.onnx`` alike) or static when asked or when the model
cannot run with any other batch: an example batch of a given size, the ONNX call with or without
a dynamic axis, and a way to keep exporter output off the terminal so that a failure reaches the
user as one line (``export_pt2`` / ``export_onnx`` there return that line as a note).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils import _pytree as pytree

from slimify.analysis.example_inputs import ExampleCall
from slimify.store.slimfile import example_call

__all__ = ["quiet_native_stderr", "first_line", "batch_of", "input_names", "dynamic_batch", "Positional",
           "onnx_file"]


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Hide what exporters print while the block runs — C++ code on file descriptors 1 and 2
    (TorchScript's ONNX exporter), Python prints (its IR dump before an error, on stdout), torch's
    loggers (torch.export's fake tensors log whole tracebacks), warnings — so that an error reaches
    the user as one line of the exception. With the ``slimify`` logger at DEBUG (``slimify
    --verbose``) nothing is hidden."""
    if logging.getLogger("slimify").isEnabledFor(logging.DEBUG):
        yield
        return
    torch_logger = logging.getLogger("torch")
    level = torch_logger.level
    torch_logger.setLevel(logging.CRITICAL)
    saved = {}
    for fd in (1, 2):
        try:
            saved[fd] = os.dup(fd)
        except OSError:  # no such stream to hide
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        with tempfile.TemporaryFile() as sink, contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            try:
                yield
            finally:
                for fd, kept in saved.items():
                    os.dup2(kept, fd)
    finally:
        for kept in saved.values():
            os.close(kept)
        torch_logger.setLevel(level)


def first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def batch_of(model: nn.Module, example: Any, batch: int) -> ExampleCall:
    """``example`` (a tensor, a tuple of inputs or a call; default: the call the model was converted
    on) with ``batch`` rows in every batched tensor, repeating its first."""
    call = example_call(model) if example is None else ExampleCall.of(example)
    return call.batched(batch)


def input_names(model: nn.Module, call: ExampleCall) -> list[str]:
    """Names of the ONNX inputs, one per tensor of ``call``: ``input`` for one tensor, else the
    ``forward`` parameter each comes from (``meta``, ``frames.0`` for a list's first item)."""
    if call.single:
        return ["input"]
    try:
        bound = inspect.signature(model.forward).bind(*call.args, **call.kwargs).arguments
    except (TypeError, ValueError):  # no signature to bind: number them
        return [f"input_{i}" for i in range(len(call.tensors()))]
    names = []
    for name, value in bound.items():
        for path, leaf in pytree.tree_flatten_with_path(value)[0]:
            if isinstance(leaf, torch.Tensor):
                names.append(".".join([name, *(str(getattr(k, "idx", getattr(k, "key", k))) for k in path)]))
    return names


def dynamic_batch(model: nn.Module, call: ExampleCall, dim: Any) -> Any:
    """``torch.export``'s ``dynamic_shapes`` for ``call``: ``{0: dim}`` for each batched tensor,
    keyed by the ``forward`` parameter it is passed to."""
    spec = lambda v: pytree.tree_map(  # noqa: E731
        lambda t: ({0: dim} if call.is_batched(t) else None) if isinstance(t, torch.Tensor) else None, v)
    if call.single:
        return (spec(call.args[0]),)
    bound = inspect.signature(model.forward).bind(*call.args, **call.kwargs).arguments
    return {name: spec(value) for name, value in bound.items()}


class Positional(nn.Module):
    """``model`` called with the tensors of ``call`` as positional arguments, in order (keyword and
    nested inputs rebuilt inside): TorchScript's ONNX exporter passes positional tensors only. Its
    tensors' names start with ``model.``."""

    def __init__(self, model: nn.Module, call: ExampleCall) -> None:
        super().__init__()
        self.model = model
        leaves, self._spec = pytree.tree_flatten((call.args, call.kwargs))
        self._given = [isinstance(v, torch.Tensor) for v in leaves]
        self._leaves = leaves
        self.train(model.training)  # the exporter restores this mode on the model after its run

    def forward(self, *tensors: torch.Tensor) -> Any:
        given = iter(tensors)
        args, kwargs = pytree.tree_unflatten([next(given) if g else v for g, v in zip(self._given, self._leaves)],
                                             self._spec)
        return self.model(*args, **kwargs)


def onnx_file(plain: nn.Module, call: ExampleCall, path: Path | io.BytesIO, opset: int, dynamic: bool,
              **options: Any) -> None:
    """Write ``plain`` to ONNX with inputs named by :func:`input_names` and outputs ``output``,
    batch dynamic or not (``options``: more arguments of ``torch.onnx.export``)."""
    names = input_names(plain, call)
    batched = [call.is_batched(t) for t in call.tensors()]
    axes = {**{n: {0: "batch"} for n, b in zip(names, batched) if b}, "output": {0: "batch"}} if dynamic else None
    module, args = (Positional(plain, call), tuple(call.tensors())) if call.kwargs else (plain, call.args)
    with quiet_native_stderr():
        torch.onnx.export(module, args, path if isinstance(path, io.BytesIO) else str(path), dynamo=False, opset_version=opset, input_names=names,
                          output_names=["output"], dynamic_axes=axes, **options)
