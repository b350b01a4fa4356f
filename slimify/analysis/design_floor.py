"""How far a model can narrow when some of its channels keep their size by design (issue 24): a
detector's class-score and box convs, logits, the model's input. Each conv and linear layer of the
graph costs ``weight.numel() × output positions`` MACs; at width 0.5 a channel fixed by design keeps
all of its share and every other one at best half, so ``floor`` is the smallest share of those MACs
width 0.5 can keep. The report says so in one line when the floor is above the benchmarks' bound."""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch.fx as fx
import torch.nn as nn

from slimify.analysis.groups import GroupTable
from slimify.analysis.shape_pass import SHAPE_KEY
from slimify.analysis.space import ChannelSpace

__all__ = ["DesignFloor", "design_floor", "BY_DESIGN", "MAC_BOUND"]

BY_DESIGN = ("model output", "model input channels", "box coordinates")  # reasons fixed by design (prefixes)
MAC_BOUND = 0.35  # the share of MACs at width 0.5 the benchmarks ask for


@dataclass
class DesignFloor:
    floor: float  # smallest share of the conv/linear MACs width 0.5 can keep
    share: float  # share of those MACs in layers whose output channels keep their size by design

    def line(self) -> str:
        return (f"by design, width 0.5 keeps at least {self.floor:.2f} of the conv/linear MACs (above {MAC_BOUND}): "
                f"{self.share:.0%} of them are in layers whose outputs keep their size (model outputs: logits, "
                f"class scores, box codes)")


def design_floor(gm: fx.GraphModule, space: ChannelSpace, table: GroupTable) -> DesignFloor | None:
    """The floor when it is above ``MAC_BOUND`` (None otherwise, or without conv/linear layers)."""
    fixed_by_design = np.zeros(max(space.size, 1), bool)
    for g in table.groups:
        if g.fixed and g.reason.startswith(BY_DESIGN):
            fixed_by_design[table.group_of_id == g.index] = True
    fixed_by_design[0] = True
    layers = _layers(gm, space)
    out_fixed = _fixed_counts(fixed_by_design, [out_ids for _, out_ids, _ in layers])
    in_fixed = _fixed_counts(fixed_by_design, [in_ids for _, _, in_ids in layers if in_ids is not None])
    total = kept = designed = 0.0
    for macs, out_ids, in_ids in layers:
        out_keep = _keep(out_ids.size, next(out_fixed))
        in_keep = _keep(in_ids.size, next(in_fixed)) if in_ids is not None else 1.0
        total += macs
        kept += macs * out_keep * in_keep
        designed += macs if fixed_by_design[out_ids].any() else 0.0
    if not total or kept / total <= MAC_BOUND:
        return None
    return DesignFloor(kept / total, designed / total)


def _fixed_counts(fixed: np.ndarray, ids: list[np.ndarray]) -> Iterator[int]:
    """How many of each array's ids are fixed, by one gather and one segmented sum for all
    layers: a gather, ``where`` and ``mean`` per layer was most of this stage's cost."""
    sizes = [a.size for a in ids]
    if not ids or 0 in sizes:  # reduceat cannot take empty segments: count one by one
        return iter([int(np.count_nonzero(fixed[a])) for a in ids])
    starts = np.cumsum([0, *sizes[:-1]])
    flags = fixed[np.concatenate([a.ravel() for a in ids])].astype(np.int64)
    return iter(np.add.reduceat(flags, starts).tolist())


def _keep(n: int, fixed: int) -> float:
    """The mean of 1.0 per fixed id and 0.5 per other one, rounded as ``np.mean`` rounds it (its
    sum of halves is exact; one division)."""
    return 0.5 * (n + fixed) / n if n else float("nan")


def _layers(gm: fx.GraphModule, space: ChannelSpace) -> list[tuple[float, np.ndarray, np.ndarray | None]]:
    """(MACs, output channel ids, input channel ids or None for depthwise) of every conv and linear call."""
    modules = dict(gm.named_modules())
    found = []
    for node in gm.graph.nodes:
        m = modules.get(node.target) if node.op == "call_module" else None
        spec = space.params.get((node.target, "weight")) if m is not None else None
        shape = node.meta.get(SHAPE_KEY)
        if spec is None or 0 not in spec.dims or not isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) \
                or not hasattr(shape, "numel"):
            continue
        channels = shape[-1] if isinstance(m, nn.Linear) else shape[1]
        positions = math.prod(shape) / max(int(channels), 1)
        found.append((float(m.weight.numel()) * positions, spec.dims[0], spec.dims.get(1)))
    return found
