"""Every width as ONE ``torch.export`` program: ``program.module()(x, width)`` (a model of several
inputs takes them all first: ``(img, meta, width)``), the weights stored once.

    >>> to_torch_export_all_widths(model, "model_all.pt2", example)
    >>> net = torch.export.load("model_all.pt2").module()
    >>> net(x, torch.tensor(0.5))

The program holds the slimmable model's full tensors as buffers. Each switch is its plain model
(:func:`slimify.deploy.extract.export`) run with :func:`torch.func.functional_call` on tensors cut from
the shared ones, and ``torch.cond`` chooses the branch from the ``width`` tensor. What this costs:
the cut is part of the graph, so every call slices the weights again (a copy where channels are
cut along a non-leading dim), and the program runs as a ``GraphModule``; see docs/deploy.md for
measured numbers. A width that is no switch fails with ``_assert_async``'s message.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimify.analysis.example_inputs import ExampleCall
from slimify.deploy.export_all_widths import WIDTH_TOLERANCE, key_prefix, tensor_sources, unknown_width_node
from slimify.deploy.export_batch import Positional, quiet_native_stderr
from slimify.deploy.extract import export
from slimify.errors import SlimifyError
from slimify.rewrite.slicing import cut
from slimify.state import switches
from slimify.state import width as at_width
from slimify.store.atomic import atomic_path
from slimify.store.slimfile import example_call

__all__ = ["AllWidths", "to_torch_export_all_widths"]

# node debug info dropped before saving: 28 MB of JSON for resnet18's four branches, beside 47 MB of weights
_META_DROPPED = ("stack_trace", "nn_module_stack", "source_fn_stack", "from_node", "torch_fn")


class AllWidths(nn.Module):
    """``forward(*inputs, width)``: the converted ``model`` at switch ``width`` (a 0-d float tensor),
    with no slimify class inside, so that ``torch.export`` can capture it. ``inputs``: the tensors of
    ``call`` (default: one), in order; its other values are constants of the program."""

    def __init__(self, model: nn.Module, call: ExampleCall | None = None) -> None:
        super().__init__()
        call = example_call(model) if call is None else call
        self.widths = switches(model)
        full = model.state_dict()
        self._buffer_of = {key: f"t{i}" for i, key in enumerate(full)}  # state-dict keys hold dots
        for key, tensor in full.items():
            self.register_buffer(self._buffer_of[key], tensor.detach().clone())
        self.register_buffer("switches", torch.tensor(self.widths, dtype=torch.float32), persistent=False)
        self._plain: list[nn.Module] = []  # a plain list: not submodules, their own tensors are not stored
        self._names: list[list[str]] = []
        self._sources: list[dict[str, tuple[str, dict]]] = []
        for i, w in enumerate(self.widths):
            plain = export(model, w).eval()
            self._plain.append(Positional(plain, call))  # its tensors are named model.*
            self._names.append(list(plain.state_dict()))
            self._sources.append(tensor_sources(model, i, key_prefix(model, w)))

    def _branch(self, i: int) -> Any:
        def run(*xs: torch.Tensor) -> torch.Tensor:
            tensors = {}
            for name in self._names[i]:
                source, dims = self._sources[i][name]
                tensors[f"model.{name}"] = cut(getattr(self, self._buffer_of[source]), dims)
            return torch.func.functional_call(self._plain[i], tensors, xs)
        return run

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *xs, width = inputs
        close = (width - self.switches).abs() < WIDTH_TOLERANCE
        torch._assert_async(close.any(), unknown_width_node(self.widths))

        def chain(i: int) -> Any:
            if i == len(self.widths) - 1:
                return self._branch(i)
            return lambda *xs: torch.cond(close[i], self._branch(i), chain(i + 1), tuple(xs))
        return chain(0)(*xs)


def _strip_debug_info(graph_module: torch.fx.GraphModule) -> None:
    for node in graph_module.graph.nodes:
        for key in _META_DROPPED:
            node.meta.pop(key, None)
    for child in graph_module.children():
        if isinstance(child, torch.fx.GraphModule):
            _strip_debug_info(child)


def to_torch_export_all_widths(model: nn.Module, path: str | Path, example: Any,
                               overwrite: bool = False, check: bool = True) -> str:
    """Capture :class:`AllWidths` of ``model`` with ``torch.export`` (dynamic batch), check the
    program at every switch against the slimmable model (≤ 1e-4 × max|y|) and save it to ``path``;
    returns a one-line summary. ``example``: one input, a tuple of inputs or an ``ExampleCall``."""
    model.eval()
    call = ExampleCall.of(example)
    if call.batch == 1:  # torch.export would specialise a batch of 1 to a constant
        call = call.batched(2)
    wrapper = AllWidths(model, call).eval()
    width0 = torch.tensor(wrapper.widths[-1], dtype=torch.float32)
    batch = torch.export.Dim("batch")
    dims = tuple({0: batch} if call.is_batched(t) else None for t in call.tensors())
    start = time.perf_counter()
    try:
        with quiet_native_stderr():  # torch.export's logs and prints; a failure is one line
            program = torch.export.export(wrapper, (*call.tensors(), width0),
                                          dynamic_shapes={"inputs": (*dims, None)})
    except Exception as e:
        raise SlimifyError(f"torch.export could not capture every width of {type(model).__name__} in one program: "
                           f"{str(e).strip().splitlines()[0]}") from e
    _strip_debug_info(program.graph_module)
    with atomic_path(path, overwrite) as tmp:
        torch.export.save(program, str(tmp))
        if check:
            _check(torch.export.load(str(tmp)).module(), model, call)
    return (f"wrote {path}: widths {', '.join(f'{w:g}' for w in wrapper.widths)} in one torch.export program "
            f"({time.perf_counter() - start:.0f} s; dynamic batch; weights stored once; run it with "
            f"torch.export.load(path).module()({'x' if call.single else '*inputs'}, torch.tensor(width)))")


def _check(program: nn.Module, model: nn.Module, call: ExampleCall, rtol: float = 1e-4) -> None:
    xs = call.batched(3 * (call.batch or 1))  # another batch size than the captured one
    for w in switches(model):
        with torch.no_grad(), at_width(model, w):
            want = xs.run(model)
            got = program(*xs.tensors(), torch.tensor(w, dtype=torch.float32))
        diff = float((got - want).abs().max())
        if got.shape != want.shape or diff > rtol * max(float(want.abs().max()), 1e-6):
            raise SlimifyError(f"the all-widths program differs from the slimmable model at width {w:g} by {diff:.3g}")
