"""What the self-check compares: an output's structure (containers, keys, dataclass fields, tensor
shapes and dtypes), the one the trace recorded, and where a switch's output departs from it."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["structure", "recorded_structure", "difference"]


def structure(value: Any) -> Any:
    """What the check compares: containers, keys and dataclass fields as they are, tensors as
    (shape, dtype), anything else as its type."""
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype)
    if isinstance(value, dict):
        return (type(value), {k: structure(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return (type(value), [structure(v) for v in value])
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value), {f.name: structure(getattr(value, f.name)) for f in dataclasses.fields(value)})
    return type(value)


def recorded_structure(shapes: Any) -> Any:
    """:func:`structure` of the output the trace recorded (a pytree of ``torch.Size``, ``None`` for
    anything else): dtypes and non-tensor leaves are not known, so not compared. The graph holds
    every dict as a dict and every list as a list (fx's immutable ones; the concrete trace makes
    dataclass outputs dicts), so the model's own kinds (an ``OrderedDict``, transformers'
    ``ModelOutput``) match them (``_same_kind``)."""
    if isinstance(shapes, torch.Size):
        return ("tensor", tuple(shapes), None)
    if isinstance(shapes, dict):
        return (dict, {k: recorded_structure(v) for k, v in shapes.items()})
    if isinstance(shapes, list):
        return (list, [recorded_structure(v) for v in shapes])
    if isinstance(shapes, tuple):
        return (type(shapes), [recorded_structure(v) for v in shapes])
    return None


def _same_kind(ref: type, got: Any) -> bool:
    """``got`` (a container type of the run) is the kind ``ref`` records: the same type, or for a
    recorded dict any mapping or dataclass, for a recorded list any list."""
    if got is ref:
        return True
    if not isinstance(got, type):
        return False
    if ref is dict:
        return issubclass(got, dict) or dataclasses.is_dataclass(got)
    return ref is list and issubclass(got, list)


def difference(ref: Any, got: Any, where: str, loose_first: bool) -> str:
    """Where ``got``'s structure departs from ``ref``'s ("" when it does not). ``loose_first``:
    sizes along the first dim may differ (a real run's detections: box counts vary with width)."""
    if ref is None:  # not recorded: anything but a tensor
        return f"{where or 'output'} is a tensor where the original has none" if _is_tensor(got) else ""
    if isinstance(ref, tuple) and len(ref) == 3 and ref[0] == "tensor":
        if not (isinstance(got, tuple) and len(got) == 3 and got[0] == "tensor"):
            return f"{where or 'output'} is no longer a tensor"
        a, b = ref[1], got[1]
        same = len(a) == len(b) and all(x == y or (d == 0 and loose_first) for d, (x, y) in enumerate(zip(a, b)))
        return "" if same and ref[2] in (None, got[2]) else f"{where or 'output'} has shape {list(b)} instead of {list(a)}"
    if isinstance(ref, tuple) and len(ref) == 2 and isinstance(ref[1], (dict, list)):
        if not (isinstance(got, tuple) and len(got) == 2 and _same_kind(ref[0], got[0])):
            return f"{where or 'output'} is a {getattr(got, '__name__', type(got).__name__)} instead of {ref[0].__name__}"
        items_ref = ref[1].items() if isinstance(ref[1], dict) else enumerate(ref[1])
        keys_got = list(got[1]) if isinstance(got[1], dict) else list(range(len(got[1])))
        if list(dict(items_ref)) != keys_got:
            return f"{where or 'output'} has entries {keys_got} instead of {list(dict(items_ref))}"
        items_ref = ref[1].items() if isinstance(ref[1], dict) else enumerate(ref[1])
        for k, sub in items_ref:
            diff = difference(sub, got[1][k], f"{where or 'output'}[{k!r}]", loose_first)
            if diff:
                return diff
        return ""
    return "" if ref == got else f"{where or 'output'} is a {got} instead of {ref}"


def _is_tensor(structured: Any) -> bool:
    return isinstance(structured, tuple) and len(structured) == 3 and structured[0] == "tensor"
