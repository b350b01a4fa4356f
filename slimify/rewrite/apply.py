"""The rewrite half of a conversion: apply a plan to the model in place (serve narrow
parameters and attributes, attach private BatchNorms, pad a feature output). Never traces."""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from slimify.analysis.plan import Plan
from slimify.rewrite.batchnorm import attach_private_batchnorm
from slimify.rewrite.config_slots import config_slot
from slimify.rewrite.output_pad import OutputPad
from slimify.rewrite.serve import SlimData, make_slimmable
from slimify.rules.caches import cache_attrs, empty_cache
from slimify.state import SlimState

__all__ = ["rewrite"]


def rewrite(model: nn.Module, plan: Plan, state: SlimState) -> None:
    """Apply ``plan``: serve narrow parameters and attributes, add private BatchNorms; widths that
    are no switch are served by slots built on first use (``rewrite/config_slots.py``)."""
    state.serve_config = config_slot
    data: dict[str, SlimData] = {}
    modules = dict(model.named_modules(remove_duplicate=False))  # one walk, not one per lookup

    def for_module(path: str) -> SlimData:
        found = data.get(path)
        return found if found is not None else data.setdefault(path, SlimData(state))

    for (path, name), per_switch in plan.params.items():
        if any(per_switch):
            for_module(path).params[name] = per_switch
    for (path, name), values in plan.attrs.items():
        module = modules[path]
        if any(_differs(v, getattr(module, name, None)) for v in values):
            for_module(path).attrs[name] = values
    for path, per_switch in plan.batchnorms.items():
        for_module(path).bn_slots = attach_private_batchnorm(modules[path], per_switch, plan.switches)
    seen: set[int] = set()
    for path, module in modules.items():  # a cached tensor has the width that computed it
        if id(module) in seen:
            continue
        seen.add(id(module))
        for name in cache_attrs(module):
            for_module(path).forward_caches[name] = (state.index, empty_cache(getattr(module, name)))
    for path, module_data in data.items():
        make_slimmable(modules[path], module_data)
    if plan.output_widths is not None:  # a feature output keeps its size: pad narrow switches
        model.register_forward_hook(OutputPad(state, plan.output_widths, plan.output_layout))


def _differs(value: Any, current: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(current, (list, tuple)):
        return list(value) != list(current)
    return value != current
