"""Width configurations: how many channels every channel group keeps, and the slots serving them.

A switch is one configuration (every group at the same width ``w``, rounded like the plan); any
other uniform width between the narrowest switch and 1, or any per-group choice of counts on the
divisor grid, is served the same way: the first time it is selected its cuts are computed from
the conversion's analysis (``plan.fill_cuts``) and appended as one more *slot* to every
slimmable module's per-switch lists, so the properties of ``nn/serve.py`` serve it unchanged and
selecting it again is one assignment.

    >>> with slimify.width(model, 0.6): ...                       # any uniform width in range
    >>> with slimify.width(model, {3: 16, 7: 24}): ...             # group → channels kept
    >>> slimify.add_config(model, "small", {3: 16, 7: 24}); slimify.configs(model)  # config_names.py

BatchNorm: switches keep their private statistics. A configuration that is not a switch takes
its affine parameters from the nearest wider switch of each layer (cut to its channels) and its
statistics from its own calibrated buffers (:func:`calibration_slot`, ``calibrate_bn``); until it
is calibrated it borrows that switch's statistics and says so once.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn

from slimify.analysis.plan import Plan, counts_for, cuts_for, group_divisor_of, group_grid, kept_fraction
from slimify.errors import SlimifyError
from slimify.rewrite.batchnorm import SwitchBatchNorm
from slimify.rewrite.output_pad import find_output_pad
from slimify.rewrite.serve import SlimData, make_slimmable, restore_class, slim_data
from slimify.rewrite.slicing import cut
from slimify.state import SlimState, get_state

if TYPE_CHECKING:
    from slimify.analysis.stages import Analysis

# ``group_grid`` and ``group_divisor_of`` (analysis's) are offered here to the stages above that
# may not import analysis (``selection``'s search walks each group's grid)
__all__ = ["config_slot", "config_counts", "group_grid", "group_divisor_of", "channels_of", "calibration_slot", "calibrated_order",
           "Slot", "describe", "analysis_of", "names_of"]

STATS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass
class Slot:
    """One configuration served after the switches."""

    counts: tuple[int, ...]  # classes kept per group
    width: float  # the uniform width, or the fraction of slimmable channels kept
    label: str  # how messages name it
    calibrated: int | None = None  # order among calibrated configurations (their BN buffers)
    warned: bool = False
    sources: set[str] = field(default_factory=set)  # switches whose statistics it borrows


class ConfigStats(SwitchBatchNorm):
    """Calibrated BatchNorm statistics of one configuration (buffers only: the affine parameters
    stay the nearest wider switch's)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        nn.Module.__init__(self)
        for name, t in tensors.items():
            self.register_buffer(name, t.detach().clone())


class ConfigBatchNorm:
    """What one BatchNorm serves at one configuration: ``source``'s tensors (a private switch
    holder, or None for the original ones) cut to the configuration's channels, or its own
    calibrated statistics once ``own`` is set."""

    def __init__(self, slot: Slot, source: int | None, take: slice | np.ndarray) -> None:
        self.slot, self.source, self.take, self.own = slot, source, take, None

    def _source(self, module: nn.Module, name: str) -> torch.Tensor | None:
        if self.source is None:
            return module._parameters[name] if name in module._parameters else module._buffers.get(name)
        holder = module._modules["slim_bn"]._modules[str(self.source)]
        return holder._parameters.get(name, holder._buffers.get(name))

    def borrowed(self, module: nn.Module, name: str) -> torch.Tensor | None:
        full = self._source(module, name)
        if full is None or name == "num_batches_tracked":
            return full
        return cut(full, {0: self.take})

    def tensor(self, module: nn.Module, name: str) -> torch.Tensor | None:
        if name in STATS and self.own is not None:
            return module._modules["slim_bn"]._modules[str(self.own)]._buffers.get(name)
        value = self.borrowed(module, name)
        if value is None or name not in STATS:
            return value  # affine: a view (or gather) of the switch's, so training reaches it
        if not module.training and not self.slot.warned:
            self.slot.warned = True
            warnings.warn(f"width configuration {self.slot.label} has no calibrated BatchNorm statistics: it uses "
                          f"those of the nearest wider switch of each layer ({', '.join(sorted(self.slot.sources))}); "
                          f"calibrate it (slimify.calibrate_bn(model, data, widths=[...]) or `slimify calibrate "
                          f"--width/--config`)", stacklevel=2)
        return value.clone()  # borrowed statistics: a train-mode update must not reach the switch's


def analysis_of(state: SlimState) -> Analysis:
    """The conversion's analysis (``analysis/stages.Analysis``): what counts and cuts every width."""
    analysis = state.record.analysis
    if analysis is None:
        raise SlimifyError("this model has no conversion analysis: convert it with slimify.convert")
    return analysis


def names_of(state: SlimState) -> dict[str, Any]:
    """The named configurations added to the model (name → uniform width or {group: channels})."""
    return state.record.configs


def describe(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{g}: {c}" for g, c in sorted(value.items())) + "}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_counts(model: nn.Module, value: Any) -> tuple[tuple[int, ...], str, Any]:
    """(classes kept per group, a label for messages, the value a name stands for)."""
    state = get_state(model)
    if isinstance(value, str):
        names = names_of(state)
        if value in names:
            return config_counts(model, names[value])[0], repr(value), names[value]
        try:
            w = float(value)
        except ValueError:
            known = [f"{s:g}" for s in state.switches] + list(names)
            raise SlimifyError(f"no width configuration named {value!r}; this model has: {', '.join(known)}") from None
        return counts_for(analysis_of(state), w), f"{w:g}", w
    if isinstance(value, dict):
        return counts_for(analysis_of(state), value), describe(value), value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise SlimifyError(f"a width must be a number, a {{group: channels}} dict or a configuration name, "
                           f"got {type(value).__name__}")
    return counts_for(analysis_of(state), value), f"{float(value):g}", float(value)


def channels_of(model: nn.Module, value: Any) -> dict[int, int]:
    """Channels each slimmable group keeps at ``value`` (a width, a dict or a name)."""
    counts = config_counts(model, value)[0]
    groups = analysis_of(get_state(model)).table.groups
    return {g.index: counts[g.index] * g.unit for g in groups if not g.fixed}


def config_slot(model: nn.Module, value: Any) -> int:
    """The slot serving ``value``: a switch when it keeps the same channels as one, else a cached
    configuration slot, built on first use."""
    state = get_state(model)
    counts, label, resolved = config_counts(model, value)
    analysis = analysis_of(state)
    for i in range(len(state.switches)):
        if all(analysis.plan.kept[g][i] == c for g, c in enumerate(counts)):
            return i
    slots = state.record.config_slots
    if counts not in slots:
        width = float(resolved) if isinstance(resolved, float) else kept_fraction(analysis.table, counts)
        slots[counts] = _build_slot(model, state, Slot(counts, width, label))
    return slots[counts]


def _build_slot(model: nn.Module, state: SlimState, slot: Slot) -> int:
    analysis = analysis_of(state)
    cuts = cuts_for(analysis, slot.counts, slot.label)
    n = len(state.switches) + len(state.slots)  # entries every per-slot list holds so far
    data = {path: d for path, m in model.named_modules() if (d := slim_data(m)) is not None}
    regenerate: set[str] = set()
    for (path, name), (index,) in cuts.params.items():
        d = data.get(path)
        if d is None and not index:
            continue
        if d is None:
            d = data[path] = SlimData(state)
            regenerate.add(path)
        if name not in d.params:
            if not index:
                continue
            d.params[name], _ = [{}] * n, regenerate.add(path)
        d.params[name] = [*d.params[name], index]  # a new list: the plan's own stays as converted
    for (path, name), (value,) in cuts.attrs.items():
        d = data.get(path)
        current = getattr(model.get_submodule(path), name, None)
        if d is None or name not in d.attrs:
            if value == current or (isinstance(value, (list, tuple)) and list(value) == list(current or [])):
                continue
            d = data.setdefault(path, SlimData(state))
            d.attrs[name], _ = [current] * n, regenerate.add(path)
        d.attrs[name] = [*d.attrs[name], value]
    for path, (index,) in cuts.batchnorms.items():
        d = data[path]
        d.bn_slots = [*d.bn_slots, _config_batchnorm(analysis.plan, state, path, d.bn_slots, index, slot)]
    for path in regenerate:  # a tensor or attribute no switch cut: the module gets its property now
        module = model.get_submodule(path)
        restore_class(module, slim_data(module))
        make_slimmable(module, data[path])
    hook = find_output_pad(model) if analysis.plan.output_widths is not None else None  # the switches pad
    if hook is not None:
        hook.widths = [*hook.widths, cuts.output_widths[0]]
    state.slots.append(slot)
    return n


def _config_batchnorm(plan: Plan, state: SlimState, path: str, holders: list, index: np.ndarray,
                      slot: Slot) -> ConfigBatchNorm:
    """Borrow from the narrowest switch whose channels include the configuration's at this layer
    (``holders``: each switch's private BatchNorm slot, None for the original tensors)."""
    best: int | None = None
    for s in range(len(state.switches)):
        have = plan.batchnorms[path][s]
        if np.isin(index, have).all() and (best is None or len(have) < len(plan.batchnorms[path][best])):
            best = s
    slot.sources.add(f"w={state.switches[best]:g}" if best is not None else "the original model")
    if best is None or holders[best] is None:
        return ConfigBatchNorm(slot, None, _as_take(index))
    return ConfigBatchNorm(slot, holders[best], _as_take(np.searchsorted(plan.batchnorms[path][best], index)))


def _as_take(index: np.ndarray) -> slice | np.ndarray:
    index = np.asarray(index, np.int64)
    if index.size and index[-1] - index[0] + 1 == index.size:
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


# -- calibration ------------------------------------------------------------------------------

def calibration_slot(model: nn.Module, value: Any) -> int | None:
    """Give the configuration ``value`` BatchNorm statistics of its own (started from the borrowed
    ones) so that calibration can fill them; returns its slot, or None for a switch (which has
    its own already). A uniform width is named after itself (``"0.6"``) so it is saved."""
    state = get_state(model)
    slot_index = config_slot(model, value)
    if slot_index < len(state.switches):
        return None
    slot = state.slots[slot_index - len(state.switches)]
    names = names_of(state)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and f"{float(value):g}" not in names:
        names[f"{float(value):g}"] = float(value)
    if slot.calibrated is None:
        slot.calibrated = sum(1 for s in state.slots if s.calibrated is not None)
        for module in model.modules():
            d = slim_data(module)
            if d is None or d.bn_slots is None:
                continue
            config_bn = d.bn_slots[slot_index]
            tensors = {n: t for n in STATS if (t := config_bn.borrowed(module, n)) is not None}
            holders = module._modules["slim_bn"]
            holders.append(ConfigStats(tensors))
            config_bn.own = len(holders) - 1
    return slot_index


def calibrated_order(model: nn.Module, value: Any) -> int | None:
    """The calibration order of a configuration's own BN statistics (None: borrowed)."""
    state = get_state(model)
    slot = state.record.config_slots.get(config_counts(model, value)[0])
    return None if slot is None or slot < len(state.switches) else state.slots[slot - len(state.switches)].calibrated
