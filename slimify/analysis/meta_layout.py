"""Shapes and memory layouts of outputs on the meta device, as torch's real kernels give them, and
the argument binding :mod:`metarun`'s op answers share. A later ``view`` that works on a real
output must work on its meta stand-in too, so layouts matter, not only shapes."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["empty", "empty_contiguous", "channels_last", "suggested", "is_meta_float", "broadcast", "broadcast_shapes",
           "bound", "sized", "as_tuple"]


def empty(shape: Any, like: torch.Tensor) -> torch.Tensor:
    """A meta tensor of ``shape`` laid out as an element-wise op lays out its output: dense, with
    ``like``'s dims in their memory order (a permuted or channels-last input stays so). The
    layout matters: a later ``view`` that works on the real output must work here too. (``empty_like``
    and ``new_empty`` cost 0.05-3 ms on meta, ``empty`` and ``empty_strided`` a few µs.)"""
    stride = like.stride()
    if like.ndim != len(shape) or 0 in stride or like.is_contiguous():  # broadcast (stride 0): contiguous
        return torch.empty(tuple(shape), dtype=like.dtype, device="meta")
    dense, step = [0] * like.ndim, 1
    for d in sorted(range(like.ndim), key=lambda d: stride[d]):  # innermost first
        dense[d] = step
        step *= max(shape[d], 1)
    return torch.empty_strided(tuple(shape), dense, dtype=like.dtype, device="meta")


def empty_contiguous(shape: Any, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def channels_last(t: torch.Tensor) -> bool:
    """``t.suggest_memory_format()`` is channels-last: torch's stride-order test (c10's
    ``is_channels_last_strides_2d``), which also holds for a channel slice of a channels-last
    tensor (not contiguous in any format). Ambiguous strides count as contiguous, as there."""
    if t.ndim != 4 or t.is_contiguous():
        return False
    size, stride, low = t.shape, t.stride(), 0
    if stride[1] == 0:
        return False
    for d in (1, 3, 2, 0):
        if size[d] == 0 or stride[d] < low or (d == 0 and low == stride[1]):
            return False
        low = stride[d] * (size[d] if size[d] > 1 else 1)
    return True


def suggested(shape: Any, like: torch.Tensor, use_channels_last: bool) -> torch.Tensor:
    """What kernels that pick a memory format write (convolution, pooling, BatchNorm, cat):
    channels-last when their inputs are, else contiguous, never another permutation."""
    if use_channels_last and len(shape) == 4:
        return torch.empty(tuple(shape), dtype=like.dtype, device="meta", memory_format=torch.channels_last)
    return empty_contiguous(shape, like)


def is_meta_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_meta and t.is_floating_point()


def broadcast(tensors: list[torch.Tensor]) -> torch.Size:
    """``torch.broadcast_shapes`` of one or two tensors: equal shapes (a residual add) cost a
    comparison, other shapes a few list operations; ``torch.broadcast_shapes`` runs torch's Python
    reference at ~0.1 ms a call. Raises as the real op would."""
    first = tensors[0].shape
    if len(tensors) == 1 or tensors[1].shape == first:
        return first
    return broadcast_shapes(first, tensors[1].shape)


def broadcast_shapes(first: Any, second: Any) -> torch.Size:
    a, b = list(first), list(second)
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + a, [1] * (n - len(b)) + b
    out = []
    for d, (x, y) in enumerate(zip(a, b)):
        if x != y and x != 1 and y != 1:
            raise RuntimeError(f"The size of tensor a ({x}) must match the size of tensor b ({y}) at non-singleton "
                               f"dimension {d}")
        out.append(y if x == 1 else x)
    return torch.Size(out)


def sized(name: str, t: Any, size: int) -> None:
    if t is not None and t.numel() != size:
        raise RuntimeError(f"{name} should contain {size} elements not {t.numel()}")


def bound(names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The values of ``names`` in a call (``None`` where not given); positional calls, as
    torch's own modules make them, cost a slice."""
    if not kwargs:
        return tuple(args[:len(names)]) + (None,) * (len(names) - len(args))
    values = dict(zip(names, args))
    values.update((k, v) for k, v in kwargs.items() if k in names)
    return tuple(values.get(n) for n in names)


def as_tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n
