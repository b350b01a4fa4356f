"""A named configuration is proven before it is stored, as the switches are at conversion.

Its cuts come from the same analysis as the switches' (``rewrite/config_slots.py``), but the
self-check only ever ran the switches: a per-group configuration combines counts no switch
combines, and analysis can miss a constraint (a size baked into forward code). So before a name
is added (by the user or by ``search``) the configuration runs once on the example input the
model was converted with — its output must have the original output's structure and shapes —
and ``export(model, config)`` must compute what the slimmable model computes at it. Otherwise
one :class:`SlimifyError` says which, and nothing is stored.

    >>> slimify.add_config(model, "lean", {3: 16, 7: 24})    # runs, exports, compares, then names it
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from slimify.check.output_structure import structure
from slimify.check.skeleton import first_line
from slimify.deploy.extract import export
from slimify.errors import SlimifyError
from slimify.rewrite import config_names
from slimify.rewrite.config_slots import config_counts, config_slot
from slimify.state import get_state
from slimify.state import width as at_width
from slimify.store.slimfile import example_call as recorded_call

__all__ = ["add_config", "prove_config", "example_call", "eval_quiet"]

RTOL = 1e-4  # of the largest output magnitude: float reordering in a smaller model, nothing more


def add_config(model: nn.Module, name: str, value: Any, replace: bool = False) -> str:
    """Name a configuration (a uniform width, {group: channels} or another name) after proving it
    (:func:`prove_config`); it is saved with the model and known to ``width``, ``export``,
    ``profile`` and ``pick``."""
    config_names.check_name(model, name, replace)
    prove_config(model, value)
    return config_names.store_config(model, name, value, replace=replace)


def example_call(model: nn.Module) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The example call the model was converted on, rebuilt (``store.slimfile.example_call``), on
    the model's device, as (args, kwargs)."""
    call = recorded_call(model).to(next(model.parameters(), torch.empty(0)).device)
    return call.args, call.kwargs


def prove_config(model: nn.Module, value: Any) -> None:
    """Run ``value`` once on the example call and compare with full width (output structure and
    shapes) and with its exported plain model (values, within ``RTOL`` of the largest); raise one
    :class:`SlimifyError` naming what differs."""
    label = config_counts(model, value)[1]
    config_slot(model, value)  # a configuration that cannot be served fails here, before any run
    args, kwargs = example_call(model)
    with _quiet_eval(model, value), torch.no_grad():
        with at_width(model, 1.0):
            full = model(*args, **kwargs)
        try:
            with at_width(model, value):
                served = model(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure is what the proof looks for
            raise SlimifyError(f"configuration {label} does not run on the example input: {type(e).__name__}: "
                               f"{first_line(e)}") from None
        if structure(served) != structure(full):
            raise SlimifyError(f"configuration {label} changes the model's output: {_shapes(served)} where full "
                               f"width gives {_shapes(full)}")
        try:
            plain = export(model, value).eval()
            exported = plain(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise SlimifyError(f"configuration {label} does not export: {type(e).__name__}: {first_line(e)}") from None
    _compare(label, served, exported)


def _compare(label: str, served: Any, exported: Any) -> None:
    if structure(exported) != structure(served):
        raise SlimifyError(f"configuration {label}: the exported model's output {_shapes(exported)} differs from the "
                           f"slimmable model's {_shapes(served)}")
    for a, b in zip(_tensors(served), _tensors(exported)):
        if a.is_floating_point() and a.numel():
            diff = float((a.float() - b.float()).abs().max())
            scale = max(float(a.float().abs().max()), 1e-6)
            if not diff <= RTOL * scale:  # NaN fails too
                raise SlimifyError(f"configuration {label}: the exported model differs from the slimmable model at "
                                   f"it by {diff:.3g} (largest output {scale:.3g}); a slimify bug, please report it")
        elif not torch.equal(a, b):
            raise SlimifyError(f"configuration {label}: the exported model's output differs from the slimmable "
                               "model's; a slimify bug, please report it")


def _tensors(value: Any) -> list[torch.Tensor]:
    """The output's tensors in the order :func:`structure` walks it."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [t for f in dataclasses.fields(value) for t in _tensors(getattr(value, f.name))]
    return []


def _shapes(value: Any) -> str:
    return ", ".join(str(list(t.shape)) for t in _tensors(value)) or "no tensor"


@contextlib.contextmanager
def eval_quiet(model: nn.Module) -> Iterator[None]:
    """Eval mode (run as deployed) without the borrowed-statistics warnings; modes restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextlib.contextmanager
def _quiet_eval(model: nn.Module, value: Any) -> Iterator[None]:
    """:func:`eval_quiet`, and the configuration's "told once" flag as it was: the user still
    hears about borrowed statistics the first time they run it."""
    state = get_state(model)
    index = config_slot(model, value) - len(state.switches)
    slot = state.slots[index] if index >= 0 else None
    warned = slot.warned if slot is not None else False
    try:
        with eval_quiet(model):
            yield
    finally:
        if slot is not None:
            slot.warned = warned
