"""Deploy one width: a plain model whose tensors really are that narrow (no slimify needed to run
it), and the same as a ``torch.export`` program (``.pt2``) or an ONNX file.

    >>> small = slimify.export(model, 0.5)         # an ordinary nn.Module, same class as before
    >>> to_onnx(model, 0.5, "model_w050.onnx")     # checked against PyTorch with onnxruntime
"""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_leaves

from slimify.analysis.example_inputs import ExampleCall
from slimify.deploy.export_batch import batch_of, dynamic_batch, first_line, onnx_file, quiet_native_stderr
from slimify.errors import SlimifyError
from slimify.rewrite.batchnorm import BN_TENSORS, SwitchBatchNorm
from slimify.rewrite.output_pad import find_output_pad, remove_output_pad
from slimify.rewrite.serve import SLIM_KEY, SlimData, restore_class, slim_data
from slimify.state import STATE_ATTR, get_state
from slimify.state import width as at_width
from slimify.store.atomic import atomic_path
from slimify.store.sources import SOURCE_ATTR

__all__ = ["export", "active_params", "to_torch_export", "to_onnx", "check_onnx", "export_pt2", "export_onnx",
           "served_names"]

_HOOK_DICTS = ("_load_state_dict_pre_hooks", "_state_dict_pre_hooks", "_state_dict_hooks",
               "_load_state_dict_post_hooks", "_forward_pre_hooks", "_forward_hooks")


def served_names(module: nn.Module, data: SlimData) -> list[str]:
    """The parameters and buffers of ``module`` that are served narrow (the exporters copy them cut)."""
    names = set(data.params)
    if data.bn_slots is not None:
        names |= {n for n in BN_TENSORS if n in module._parameters or n in module._buffers}
    return sorted(names)


def _from_slimify(hook: Any) -> bool:
    fn = getattr(hook, "hook", hook)  # torch wraps some hooks in _WrappedHook
    return (getattr(fn, "__module__", "") or "").startswith("slimify")


def _narrow(module: nn.Module, data: SlimData) -> dict[str, torch.Tensor | None]:
    """The tensors ``module`` serves at the active switch, copied into their own storage."""
    out: dict[str, torch.Tensor | None] = {}
    for name in served_names(module, data):
        value = getattr(module, name)
        if value is None:
            out[name] = None
            continue
        full = module._parameters.get(name)
        tensor = value.detach().clone(memory_format=torch.contiguous_format)
        out[name] = nn.Parameter(tensor, requires_grad=full.requires_grad) if full is not None else tensor
    return out


def _strip(module: nn.Module, data: SlimData, narrow: dict[str, torch.Tensor | None]) -> None:
    """Turn the copied ``module`` into its plain class with the narrow tensors and attributes."""
    index = data.state.index
    for name, tensor in narrow.items():
        target = module._parameters if name in module._parameters else module._buffers
        target[name] = tensor
    module._modules.pop("slim_bn", None)
    for hooks_name in _HOOK_DICTS:
        hooks = getattr(module, hooks_name, None)
        if hooks:
            for key in [k for k, h in hooks.items() if _from_slimify(h)]:
                del hooks[key]
    restore_class(module, data)
    for name, values in data.attrs.items():
        setattr(module, name, copy.deepcopy(values[index]))


def export(model: nn.Module, width: Any) -> nn.Module:
    """A deep copy of the converted ``model`` at ``width`` (a switch, any uniform width in range, a
    {group: channels} configuration or a configuration's name) as an ordinary model: every
    tensor cut to its active channels (BatchNorm takes that switch's private statistics), every
    width attribute (``out_channels``, ``num_heads``…) a plain value, and no slimify class, hook
    or state left, so ``torch.save``/``torch.export``/ONNX see a normal network. ``model`` itself
    is not changed (its active width is restored). A feature model whose narrow switches pad
    their output (``slimify.nn.output_pad``) exports as ``nn.Sequential(model, nn.ZeroPad1d)``."""
    state = get_state(model)
    with at_width(model, width):  # a bad width fails before any copying
        hook = find_output_pad(model)
        pad = hook.plain() if hook is not None else None
        modules = [(path, m, d) for path, m in model.named_modules() if (d := slim_data(m)) is not None]
        narrow = {path: _narrow(m, d) for path, m, d in modules}
        memo: dict[int, Any] = {id(state): state}
        for path, m, d in modules:  # do not copy full tensors that are replaced anyway
            for name in narrow[path]:
                full = m._parameters.get(name, m._buffers.get(name))
                if full is not None:
                    memo[id(full)] = torch.empty(0)
            if "slim_bn" in m._modules:
                memo[id(m._modules["slim_bn"])] = nn.ModuleList()
            memo[id(d)] = None  # the plan data is dropped too
        plain = copy.deepcopy(model, memo)
        for path, _, d in modules:
            _strip(plain.get_submodule(path), d, narrow[path])
    plain.__dict__.pop(STATE_ATTR, None)
    plain.__dict__.pop(SOURCE_ATTR, None)
    remove_output_pad(plain)
    leftover = [f"{p or '<root>'}: {type(m).__module__}.{type(m).__name__}" for p, m in plain.named_modules()
                if type(m).__module__.startswith("slimify.rewrite") or SLIM_KEY in m.__dict__]
    if leftover:
        raise SlimifyError(f"export left slimify modules behind: {', '.join(leftover[:3])}")
    return plain if pad is None else nn.Sequential(plain, pad)


def active_params(model: nn.Module, width: Any = None) -> int:
    """Parameters the converted ``model`` uses at ``width`` (default: the active one): the sum of
    the served tensors' sizes, private BatchNorm storage counted only for the switch it serves."""
    get_state(model)
    with contextlib.nullcontext() if width is None else at_width(model, width):
        seen: set[int] = set()
        total = 0
        for module in model.modules():
            if isinstance(module, SwitchBatchNorm):  # storage, counted through the BN it serves
                continue
            data = slim_data(module)
            served = set(served_names(module, data)) if data is not None else set()
            for name, p in module._parameters.items():
                if p is None or id(p) in seen:
                    continue
                seen.add(id(p))
                total += getattr(module, name).numel() if name in served else p.numel()
    return total


def width_label(width: Any) -> str:
    """A width in messages: ``width 0.5``, or ``configuration 'name'`` / a {group: channels} dict."""
    return f"width {width:g}" if isinstance(width, (int, float)) else f"configuration {width!r}"


def _plain_eval(model: nn.Module, width: Any) -> nn.Module:
    plain = export(model, width) if STATE_ATTR in model.__dict__ else copy.deepcopy(model)
    return plain.eval()


def to_torch_export(model: nn.Module, width: float, path: str | Path, example: Any = None,
                    overwrite: bool = False, batch_size: int | None = None) -> Path:
    """Export switch ``width`` with ``torch.export`` and save the program to ``path`` (``.pt2``);
    load it with ``torch.export.load(path).module()``. ``example``: one input, a tuple of inputs
    (``(img, meta)``) or an ``ExampleCall`` with keyword inputs; default: the form the model was
    converted on. The batch dimension is dynamic unless ``batch_size`` is given (or the model
    cannot have one: see :func:`export_pt2`)."""
    return export_pt2(model, width, path, example, overwrite, batch_size)[0]


def to_onnx(model: nn.Module, width: float, path: str | Path, example: Any = None,
            overwrite: bool = False, opset: int = 17, check: bool = True, batch_size: int | None = None) -> Path:
    """Export switch ``width`` to ONNX (opset ``opset``, dynamic batch unless ``batch_size``; the
    TorchScript-based exporter, which handles these CNNs fast) and, with ``check``, compare
    onnxruntime's output with PyTorch's on ``example`` (as for :func:`to_torch_export`; inputs are
    named ``input``, or after ``forward``'s parameters for several); see :func:`export_onnx`."""
    return export_onnx(model, width, path, example, overwrite, opset, check, batch_size)[0]


def export_pt2(model: nn.Module, width: float, path: str | Path, example: Any = None,
               overwrite: bool = False, batch_size: int | None = None) -> tuple[Path, str]:
    """``torch.export`` switch ``width`` to ``path``; batch dimension dynamic unless ``batch_size``
    is given or capture with a dynamic batch fails (then static, said in the note). Returns
    (path, a note naming the dynamic dimensions)."""
    plain = _plain_eval(model, width)
    note = None
    program = None
    if batch_size is None:
        x = batch_of(model, example, 2)  # batch 1 would be specialised to a constant
        try:
            with quiet_native_stderr():
                program = torch.export.export(plain, x.args, x.kwargs,
                                              dynamic_shapes=dynamic_batch(plain, x, torch.export.Dim("batch")))
            note = f"dynamic: batch (dim 0 of the input{'' if x.single else 's'})"
        except Exception as e:
            reason = first_line(e)
            batch_size = 1
            note = f"static batch 1: a dynamic batch is impossible for this model ({reason[:160]})"
    if program is None:
        x = batch_of(model, example, batch_size)
        try:
            with quiet_native_stderr():
                program = torch.export.export(plain, x.args, x.kwargs)
        except Exception as e:
            raise SlimifyError(f"torch.export could not capture {type(plain).__name__} at {width_label(width)}: "
                               f"{first_line(e)}") from e
        note = note or f"static batch {batch_size}, no dynamic dimensions"
    with atomic_path(path, overwrite) as tmp:
        torch.export.save(program, str(tmp))
    return Path(path), note


def export_onnx(model: nn.Module, width: float, path: str | Path, example: Any = None,
                overwrite: bool = False, opset: int = 17, check: bool = True,
                batch_size: int | None = None) -> tuple[Path, str]:
    """ONNX export of switch ``width`` (see :func:`to_onnx`). With a dynamic batch the file is also
    run at another batch size; if that fails or differs, the model cannot have a dynamic batch (a
    size baked into its graph) and is exported with a static one, said in the note."""
    plain = _plain_eval(model, width)
    with atomic_path(path, overwrite) as tmp:
        note = None
        if batch_size is None:
            x = batch_of(model, example, 1)
            try:
                onnx_file(plain, x, tmp, opset, dynamic=True)
                if check:
                    check_onnx(tmp, plain, x)
                with quiet_native_stderr():  # onnxruntime logs the failure of a baked batch size
                    check_onnx(tmp, plain, batch_of(model, example, 3))  # another batch size
                note = f"dynamic: batch (dim 0 of {'input' if x.single else 'the inputs'} and output)"
            except Exception as e:
                note = f"static batch 1: a dynamic batch is impossible for this model ({first_line(e)[:160]})"
                batch_size = 1
        if batch_size is not None:
            x = batch_of(model, example, batch_size)
            try:
                onnx_file(plain, x, tmp, opset, dynamic=False)
            except Exception as e:
                raise SlimifyError(f"ONNX export failed for {type(plain).__name__} at {width_label(width)}: "
                                   f"{first_line(e)}") from e
            if check:
                check_onnx(tmp, plain, x)
            note = note or f"static batch {batch_size}, no dynamic dimensions"
    return Path(path), note


def check_onnx(path: str | Path, plain: nn.Module, x: Any, rtol: float = 1e-4) -> float:
    """Run the ONNX file with onnxruntime and raise if it differs from ``plain(x)`` (``x``: one
    input, a tuple of inputs or an ``ExampleCall``) by more than ``rtol`` × max|y|; returns the
    largest difference."""
    import numpy as np
    import onnxruntime as ort

    call = ExampleCall.of(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), call.tensors())}
    got = session.run(None, feed)[0]
    with torch.no_grad():
        out = [t for t in tree_leaves(call.run(plain)) if isinstance(t, torch.Tensor)]  # the first output
        want = out[0].detach().cpu().numpy()
    diff = float(np.abs(got - want).max())
    if diff > rtol * max(float(np.abs(want).max()), 1e-6):
        raise SlimifyError(f"ONNX output differs from PyTorch by {diff:.3g} (max |y| {np.abs(want).max():.3g})")
    return diff
