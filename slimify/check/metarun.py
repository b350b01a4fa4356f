"""Run a model's own forward on the meta device at the cost of its Python code, not its kernels.

The self-check runs every switch on the meta device. There, many ops cost 0.5-9 ms each, because
torch computes their meta result with Python decompositions (``batch_norm`` 9 ms, ``add`` 1 ms),
while only the output's shape, dtype and the checks that a real kernel would make matter.
:class:`FastMeta` answers the common ones (element-wise arithmetic, activations, norms,
convolutions, linear layers, reductions, adaptive pooling, cat) directly: the same broadcasting rules
and the same size checks as the real op (a wrong size still raises), an empty meta tensor as the
result. Everything else runs its ordinary meta kernel.
"""
from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["FastMeta"]

_BINARY_NAMES = ("add", "sub", "mul", "div", "true_divide")
_UNARY_NAMES = ("relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "mish", "elu",
                "leaky_relu", "hardtanh", "softplus", "neg", "exp", "sqrt", "rsqrt", "abs", "dropout", "contiguous",
                "clone", "softmax", "log_softmax")


def _targets(names: tuple[str, ...], dunders: tuple[str, ...] = ()) -> dict[Any, bool]:
    """Function objects for ``names`` in torch, Tensor (plus in-place ``name_``), F and
    operator → whether the call writes into its first argument."""
    found: dict[Any, bool] = {}
    for name in names:
        for ns in (torch, F, torch.Tensor, operator):
            target = getattr(ns, name, None)
            if callable(target):
                found.setdefault(target, False)
        inplace = getattr(torch.Tensor, name + "_", None)
        if callable(inplace):
            found[inplace] = True
    for name in dunders:
        found[getattr(torch.Tensor, f"__{name}__")] = False
        found[getattr(torch.Tensor, f"__r{name}__")] = False
        found[getattr(torch.Tensor, f"__i{name}__")] = True
        found[getattr(operator, f"i{name}")] = True
    return found


_BINARY = _targets(_BINARY_NAMES, ("add", "sub", "mul", "truediv"))
_UNARY = _targets(_UNARY_NAMES)


def _empty(shape: Any, like: torch.Tensor) -> torch.Tensor:
    """A meta tensor of ``shape`` (``like``'s strides when the shape is its own): ``empty_like``
    and ``new_empty`` cost 0.05-3 ms on meta, ``empty`` and ``empty_strided`` a few µs."""
    if tuple(shape) == tuple(like.shape):
        return torch.empty_strided(like.shape, like.stride(), dtype=like.dtype, device="meta")
    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def _is_meta_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_meta and t.is_floating_point()


def _broadcast(tensors: list[torch.Tensor]) -> torch.Size:
    """``torch.broadcast_shapes`` of one or two tensors: equal shapes (a residual add) cost a
    comparison, other shapes a few list operations; ``torch.broadcast_shapes`` runs torch's Python
    reference at ~0.1 ms a call. Raises as the real op would."""
    first = tensors[0].shape
    if len(tensors) == 1 or tensors[1].shape == first:
        return first
    a, b = list(first), list(tensors[1].shape)
    n = max(len(a), len(b))
    a, b = [1] * (n - len(a)) + a, [1] * (n - len(b)) + b
    out = []
    for d, (x, y) in enumerate(zip(a, b)):
        if x != y and x != 1 and y != 1:
            raise RuntimeError(f"The size of tensor a ({x}) must match the size of tensor b ({y}) at non-singleton "
                               f"dimension {d}")
        out.append(y if x == 1 else x)
    return torch.Size(out)


def _binary(args: tuple[Any, ...], kwargs: dict[str, Any], inplace: bool) -> torch.Tensor | None:
    if len(args) != 2 or kwargs:
        return None
    a, b = args
    tensors = [t for t in (a, b) if isinstance(t, torch.Tensor)]
    if not all(_is_meta_float(t) for t in tensors) or len({t.dtype for t in tensors}) != 1 or not all(
            isinstance(v, torch.Tensor) or type(v) in (int, float) for v in (a, b)):
        return None
    shape = _broadcast(tensors)  # raises as the real op would
    if inplace:
        if shape != a.shape:
            raise RuntimeError(f"output with shape {list(a.shape)} doesn't match the broadcast shape {list(shape)}")
        return a
    like = next((t for t in tensors if t.shape == shape), tensors[0])
    return _empty(shape, like)


def _unary(args: tuple[Any, ...], kwargs: dict[str, Any], inplace: bool) -> torch.Tensor | None:
    if not args or not _is_meta_float(args[0]) or kwargs.get("dtype") is not None:
        return None
    x = args[0]
    return x if inplace or kwargs.get("inplace") or (len(args) > 1 and args[-1] is True) else _empty(x.shape, x)


def _sized(name: str, t: Any, size: int) -> None:
    if t is not None and t.numel() != size:
        raise RuntimeError(f"{name} should contain {size} elements not {t.numel()}")


def _bound(names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """The values of ``names`` in a call (``None`` where not given); positional calls, as
    torch's own modules make them, cost a slice."""
    if not kwargs:
        return tuple(args[:len(names)]) + (None,) * (len(names) - len(args))
    values = dict(zip(names, args))
    values.update((k, v) for k, v in kwargs.items() if k in names)
    return tuple(values.get(n) for n in names)


_BN_NAMES = ("input", "running_mean", "running_var", "weight", "bias")


def _batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x, *tensors = _bound(_BN_NAMES, args, kwargs)
    if not _is_meta_float(x) or x.ndim < 2:
        return None
    for name, t in zip(_BN_NAMES[1:], tensors):
        _sized(name, t, x.shape[1])
    return _empty(x.shape, x)


def _layer_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x, shape, weight, bias = _bound(("input", "normalized_shape", "weight", "bias"), args, kwargs)
    shape = tuple(shape or ())
    if not _is_meta_float(x):
        return None
    if tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise RuntimeError(f"Given normalized_shape={list(shape)}, expected input with shape [*, "
                           f"{', '.join(map(str, shape))}], but got input of size{list(x.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and tuple(t.shape) != shape:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                               f"{list(t.shape)} and normalized_shape = {list(shape)}")
    return _empty(x.shape, x)


def _group_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x, groups, weight, bias = _bound(("input", "num_groups", "weight", "bias"), args, kwargs)
    if not _is_meta_float(x) or x.ndim < 2 or not isinstance(groups, int):
        return None
    if groups <= 0 or x.shape[1] % groups:
        raise RuntimeError(f"Expected number of channels in input to be divisible by num_groups, but got input "
                           f"of shape {list(x.shape)} and num_groups={groups}")
    _sized("weight", weight, x.shape[1])
    _sized("bias", bias, x.shape[1])
    return _empty(x.shape, x)


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


_CONV_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _conv(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``conv{1,2,3}d``: the real kernel's checks on channels, groups and bias, and its size rule."""
    x, w, bias, stride, padding, dilation, groups = _bound(_CONV_NAMES, args, kwargs)
    if not (_is_meta_float(x) and isinstance(w, torch.Tensor) and w.is_meta) or x.ndim != w.ndim:
        return None
    n = w.ndim - 2
    groups, padding = 1 if groups is None else groups, 0 if padding is None else padding
    if not isinstance(groups, int) or isinstance(padding, str) and padding not in ("same", "valid"):
        return None
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise RuntimeError(f"Given groups={groups}, weight of size {list(w.shape)}, expected input{list(x.shape)} "
                           f"to have {w.shape[1] * groups} channels, but got {x.shape[1]} channels instead")
    _sized("bias", bias, w.shape[0])
    stride, dilation = _tuple(1 if stride is None else stride, n), _tuple(1 if dilation is None else dilation, n)
    if padding == "same":
        spatial = list(x.shape[2:])
    else:
        pad = (0,) * n if padding == "valid" else _tuple(padding, n)
        spatial = [(size + 2 * p - d * (k - 1) - 1) // s + 1
                   for size, p, d, k, s in zip(x.shape[2:], pad, dilation, w.shape[2:], stride)]
    if min(spatial, default=1) <= 0:
        return None  # let the real meta kernel raise its own error
    return _empty((x.shape[0], w.shape[0], *spatial), x)


def _linear(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x, w, bias = _bound(("input", "weight", "bias"), args, kwargs)
    if not (_is_meta_float(x) and isinstance(w, torch.Tensor) and w.is_meta and w.ndim == 2 and x.ndim >= 1):
        return None
    if x.shape[-1] != w.shape[1]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({x.numel() // max(x.shape[-1], 1)}x"
                           f"{x.shape[-1]} and {w.shape[1]}x{w.shape[0]})")
    _sized("bias", bias, w.shape[0])
    return _empty((*x.shape[:-1], w.shape[0]), x)


def _reduce(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``mean``/``sum``/``amax`` over given dims."""
    x = args[0] if args else None
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if not _is_meta_float(x) or dims is None or set(kwargs) - {"dim", "keepdim"} or len(args) > 3:
        return None
    dims = {d % x.ndim for d in ((dims,) if isinstance(dims, int) else dims)}
    shape = [1 if d in dims else s for d, s in enumerate(x.shape) if keep or d not in dims]
    return _empty(shape, x)


def _cat(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``cat(tensors, dim)`` (DenseNet's concatenations: 1 ms each as a meta decomposition)."""
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not tensors or set(kwargs) - {"tensors", "dim"} or not all(
            _is_meta_float(t) for t in tensors) or len({(t.ndim, t.dtype) for t in tensors}) != 1 or not isinstance(dim, int):
        return None
    first = tensors[0]
    d = dim % first.ndim
    for t in tensors[1:]:
        if any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != d):
            raise RuntimeError(f"Sizes of tensors must match except in dimension {d}. Expected size "
                               f"{list(first.shape)} but got size {list(t.shape)} for a tensor in the list")
    shape = list(first.shape)
    shape[d] = sum(t.shape[d] for t in tensors)
    return _empty(shape, first)


def _adaptive_pool(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x = args[0] if args else kwargs.get("input")
    size = args[1] if len(args) > 1 else kwargs.get("output_size")
    if not _is_meta_float(x) or size is None or len(args) > 2 or set(kwargs) - {"input", "output_size"}:
        return None
    n = x.ndim - 2 if x.ndim > 2 else 1
    size = _tuple(size, n)
    if len(size) != n or x.ndim < n + 1:
        return None
    return _empty((*x.shape[:-n], *(s if o is None else o for s, o in zip(x.shape[-n:], size))), x)


_NORMS: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], torch.Tensor | None]] = {
    F.batch_norm: _batch_norm, torch.batch_norm: _batch_norm, F.layer_norm: _layer_norm,
    torch.layer_norm: _layer_norm, F.group_norm: _group_norm, torch.group_norm: _group_norm,
    F.conv1d: _conv, F.conv2d: _conv, F.conv3d: _conv, F.linear: _linear,
    F.adaptive_avg_pool1d: _adaptive_pool, F.adaptive_avg_pool2d: _adaptive_pool, F.adaptive_avg_pool3d: _adaptive_pool,
    **{getattr(ns, name): _reduce for ns in (torch, torch.Tensor) for name in ("mean", "sum", "amax", "amin")},
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat,
}


class FastMeta(TorchFunctionMode):
    """Shape-only answers for common ops on meta tensors (see the module docstring)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = None
        if func in _BINARY:
            out = _binary(args, kwargs, _BINARY[func])
        elif func in _UNARY:
            out = _unary(args, kwargs, _UNARY[func])
        elif func in _NORMS:
            out = _NORMS[func](args, kwargs)
        return out if out is not None else func(*args, **kwargs)
