"""The example a model was converted on, kept as data: a ``.slim`` file records its form (shapes,
dtypes, lists, keyword names, plain values) so ``load`` converts on an input of the same form —
several inputs (a Siamese pair, RAFT's two frames), a list of images, keyword inputs (a timestep)."""
from __future__ import annotations

from typing import Any

import torch

from slimify.errors import SlimifyError

__all__ = ["describe", "rebuild", "first_shape"]

_PLAIN = (type(None), bool, int, float, str)


def describe(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """JSON for ``model(*args, **kwargs)``: a tensor is ``{"shape": …, "dtype": …}``."""
    return {"args": [_describe(a) for a in args], "kwargs": {k: _describe(v) for k, v in (kwargs or {}).items()}}


def _describe(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, (list, tuple)):
        return {"list": [_describe(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": {str(k): _describe(v) for k, v in value.items()}}
    if isinstance(value, _PLAIN):
        return {"value": value}
    raise SlimifyError(f"an example input of type {type(value).__name__} cannot be recorded: use tensors, "
                       "lists, dicts and plain values")


def rebuild(spec: dict[str, Any], generator: torch.Generator) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Random inputs of the recorded form (``describe``'s inverse, values aside)."""
    try:
        return (tuple(_rebuild(a, generator) for a in spec["args"]),
                {k: _rebuild(v, generator) for k, v in spec["kwargs"].items()})
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise SlimifyError(f"the recorded example inputs are invalid ({e})") from None


def _rebuild(spec: dict[str, Any], generator: torch.Generator) -> Any:
    if "shape" in spec:
        shape, dtype = [int(s) for s in spec["shape"]], getattr(torch, spec["dtype"])
        if not isinstance(dtype, torch.dtype) or len(shape) > 6 or any(not 0 <= s <= 4096 for s in shape):
            raise ValueError(f"bad tensor {spec}")
        if dtype.is_floating_point:
            return torch.randn(shape, generator=generator).to(dtype)
        return torch.zeros(shape, dtype=dtype)
    if "list" in spec:
        return [_rebuild(v, generator) for v in spec["list"]]
    if "dict" in spec:
        return {k: _rebuild(v, generator) for k, v in spec["dict"].items()}
    value = spec["value"]
    if not isinstance(value, _PLAIN):
        raise ValueError(f"bad value {value!r}")
    return value


def first_shape(args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> list[int] | None:
    """The shape of the first tensor among the inputs (what ``example_shape`` has always meant)."""
    stack = [*args, *(kwargs or {}).values()]
    while stack:
        value = stack.pop(0)
        if isinstance(value, torch.Tensor):
            return list(value.shape)
        if isinstance(value, (list, tuple)):
            stack = [*value, *stack]
        elif isinstance(value, dict):
            stack = [*value.values(), *stack]
    return None
