"""Width attributes that come in input/output pairs (``hidden_size`` / ``hidden_size_output``,
``dim`` / ``dim_out``, ``in_chs`` / ``out_chs``): forward code compares them (transformers'
``HieraLayer``: ``if self.hidden_size != self.hidden_size_output: project``), which no trace
records because both are plain ints. When one of a pair follows its width (forward code used it as
a size), a partner left at full size could equal it at a narrower width and flip the branch. So the
partner follows the channels of the child layer it sized (``layernorm_before`` over
``hidden_size`` channels): the pair keeps comparing as at full width. Only an unambiguous match
counts; the self-check proves every switch either way."""
from __future__ import annotations

import re

import numpy as np
import torch.nn as nn

from slimify.analysis.space import ChannelSpace, Count

__all__ = ["follow_paired_sizes", "paired_names"]

_SIDE = re.compile(r"(^|_)(in|out|input|output)(_|$)")
_HINTS = ("dim", "size", "chs", "channels", "features", "width", "hidden")


def paired_names(a: str, b: str) -> bool:
    """``hidden_size`` / ``hidden_size_output``, ``dim`` / ``dim_out``, ``in_chs`` / ``out_chs``:
    two names of one width, one of them marked as an input or output side."""
    if a == b or not any(h in a.lower() for h in _HINTS):
        return False
    stem_a, stem_b = (_SIDE.sub("_", n.lower()).strip("_") for n in (a, b))
    return stem_a == stem_b and (stem_a != a.lower() or stem_b != b.lower())


def _counts(template: object) -> list[Count]:
    if isinstance(template, Count):
        return [template]
    if isinstance(template, (list, tuple)):
        return [c for t in template for c in _counts(t)]
    return []


def follow_paired_sizes(space: ChannelSpace, root: nn.Module) -> None:
    """Register the unregistered partner of every followed width attribute (see module doc)."""
    by_module: dict[str, dict[str, object]] = {}
    for (path, name), spec in space.attrs.items():
        by_module.setdefault(path, {})[name] = spec.template
    modules = dict(root.named_modules())
    context = space.context
    for path, followed in list(by_module.items()):
        module = modules.get(path)
        if module is None:
            continue
        for name, value in vars(module).items():
            if name in followed or name.startswith("_") or type(value) is not int or value < 2:
                continue
            partners = [p for p in followed if isinstance(followed[p], Count) and paired_names(name, p)]
            if not partners:
                continue
            found = _sized_channels(by_module, path, value)
            if found is not None:
                space.context = f"{path}.{name}, the partner of {path}.{partners[0]}"
                space.attr(path, name, found)
    space.context = context


def _sized_channels(by_module: dict[str, dict[str, object]], path: str, value: int) -> Count | None:
    """The one set of channels of ``value`` entries that the module or a direct child follows."""
    prefix = f"{path}." if path else ""
    found: list[Count] = []
    for child, attrs in by_module.items():
        if child != path and not (child.startswith(prefix) and "." not in child[len(prefix):]):
            continue
        found += [c for t in attrs.values() for c in _counts(t) if len(c.ids) == value * c.unit]
    distinct = {np.asarray(c.ids).tobytes(): c for c in found}
    return next(iter(distinct.values())) if len(distinct) == 1 else None
