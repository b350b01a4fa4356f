"""Run a model's own forward on the meta device at the cost of its Python code, not its kernels.

The shape pass and the self-check run models on the meta device. There, many ops cost 0.5-10 ms
each, because torch computes their meta result with Python decompositions (``batch_norm`` 9 ms,
``interpolate`` 10 ms, ``add`` 1 ms), while only the output's shape, dtype and layout and the
checks that a real kernel would make matter. :class:`FastMeta` answers the common ones
(element-wise arithmetic, activations, norms, convolutions, linear layers, reductions, adaptive
pooling, cat, matrix products, attention, multi-head attention, normalize, interpolate, ``roll``, ``masked_fill``, ``new_empty``,
``addcmul``, ``norm``) directly: the same
broadcasting rules and the same size checks as the real op (a wrong size still raises), an empty
meta tensor laid out as the real kernel lays out its output as the result. Everything else runs
its ordinary meta kernel.
"""
from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from slimify.analysis.meta_attention import attention, multi_head_attention
from slimify.analysis.meta_layout import (
    as_tuple,
    bound,
    broadcast,
    broadcast_shapes,
    channels_last,
    empty,
    empty_contiguous,
    is_meta_float,
    sized,
    suggested,
)

__all__ = ["FastMeta", "conv", "linear", "batch_norm"]

_BINARY_NAMES = ("add", "sub", "mul", "div", "true_divide")
_UNARY_NAMES = ("relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "mish", "elu",
                "leaky_relu", "hardtanh", "softplus", "neg", "exp", "sqrt", "rsqrt", "abs", "dropout", "clone")
_CONTIGUOUS_NAMES = ("softmax", "log_softmax")  # their kernels write a contiguous output whatever the input


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
_UNARY_CONTIGUOUS = _targets(_CONTIGUOUS_NAMES)


def _binary(args: tuple[Any, ...], kwargs: dict[str, Any], *, inplace: bool) -> torch.Tensor | None:
    if len(args) != 2 or kwargs:
        return None
    a, b = args
    tensors = [t for t in (a, b) if isinstance(t, torch.Tensor)]
    if not all(is_meta_float(t) for t in tensors) or len({t.dtype for t in tensors}) != 1 or not all(
            isinstance(v, torch.Tensor) or type(v) in (int, float) for v in (a, b)):
        return None
    shape = broadcast(tensors)  # raises as the real op would
    if inplace:
        if shape != a.shape:
            raise RuntimeError(f"output with shape {list(a.shape)} doesn't match the broadcast shape {list(shape)}")
        return a
    like = next((t for t in tensors if t.shape == shape), tensors[0])
    return empty(shape, like)


def _unary(args: tuple[Any, ...], kwargs: dict[str, Any], *, inplace: bool,
           contiguous: bool = False) -> torch.Tensor | None:
    if not args or not is_meta_float(args[0]) or kwargs.get("dtype") is not None or "memory_format" in kwargs:
        return None
    x = args[0]
    if inplace or kwargs.get("inplace") or (len(args) > 1 and args[-1] is True):
        return x
    return empty_contiguous(x.shape, x) if contiguous else empty(x.shape, x)


def _make_contiguous(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``x.contiguous()``: ``x`` itself when it is, else a contiguous copy (other memory formats:
    the ordinary path)."""
    if len(args) != 1 or kwargs or not is_meta_float(args[0]):
        return None
    x = args[0]
    return x if x.is_contiguous() else empty_contiguous(x.shape, x)


_BN_NAMES = ("input", "running_mean", "running_var", "weight", "bias")


def batch_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x, *tensors = bound(_BN_NAMES, args, kwargs)
    if not is_meta_float(x) or x.ndim < 2:
        return None
    for name, t in zip(_BN_NAMES[1:], tensors):
        sized(name, t, x.shape[1])
    return suggested(x.shape, x, channels_last(x))


def _layer_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x, shape, weight, bias = bound(("input", "normalized_shape", "weight", "bias"), args, kwargs)
    if not is_meta_float(x):
        return None
    _normalized_shape(x, shape, weight=weight, bias=bias)
    return empty_contiguous(x.shape, x)  # the kernel writes a contiguous output


def _rms_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``rms_norm`` (AIMv2: ~1 ms a call as a meta decomposition): layer norm's checks, no bias,
    and an element-wise op's layout."""
    x, shape, weight = bound(("input", "normalized_shape", "weight"), args, kwargs)
    if not is_meta_float(x):
        return None
    _normalized_shape(x, shape, weight=weight)
    return empty(x.shape, x)


def _normalized_shape(x: torch.Tensor, shape: Any, **affine: torch.Tensor | None) -> None:
    shape = tuple(shape or ())
    if tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise RuntimeError(f"Given normalized_shape={list(shape)}, expected input with shape [*, "
                           f"{', '.join(map(str, shape))}], but got input of size{list(x.shape)}")
    for name, t in affine.items():
        if t is not None and tuple(t.shape) != shape:
            raise RuntimeError(f"Expected {name} to be of same shape as normalized_shape, but got {name} of shape "
                               f"{list(t.shape)} and normalized_shape = {list(shape)}")


def _new_empty(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``x.new_empty(size)`` (torch's dropout and timm's layers make masks with it): 13 µs on meta."""
    if len(args) < 2 or not isinstance(args[0], torch.Tensor) or not args[0].is_meta or set(kwargs) - {"dtype"}:
        return None
    size = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else args[1:]
    if not all(type(n) is int and n >= 0 for n in size):
        return None
    return torch.empty(tuple(size), dtype=kwargs.get("dtype") or args[0].dtype, device="meta")


def _group_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x, groups, weight, bias = bound(("input", "num_groups", "weight", "bias"), args, kwargs)
    if not is_meta_float(x) or x.ndim < 2 or not isinstance(groups, int):
        return None
    if groups <= 0 or x.shape[1] % groups:
        raise RuntimeError(f"Expected number of channels in input to be divisible by num_groups, but got input "
                           f"of shape {list(x.shape)} and num_groups={groups}")
    sized("weight", weight, x.shape[1])
    sized("bias", bias, x.shape[1])
    return empty_contiguous(x.shape, x)  # the kernel writes a contiguous output


_CONV_NAMES = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def conv(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``conv{1,2,3}d``: the real kernel's checks on channels, groups and bias, and its size rule."""
    x, w, bias, stride, padding, dilation, groups = bound(_CONV_NAMES, args, kwargs)
    if not (is_meta_float(x) and isinstance(w, torch.Tensor) and w.is_meta) or x.ndim != w.ndim:
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
    sized("bias", bias, w.shape[0])
    stride, dilation = as_tuple(1 if stride is None else stride, n), as_tuple(1 if dilation is None else dilation, n)
    if padding == "same":
        spatial = list(x.shape[2:])
    else:
        pad = (0,) * n if padding == "valid" else as_tuple(padding, n)
        spatial = [(size + 2 * p - d * (k - 1) - 1) // s + 1
                   for size, p, d, k, s in zip(x.shape[2:], pad, dilation, w.shape[2:], stride)]
    if min(spatial, default=1) <= 0:
        return None  # let the real meta kernel raise its own error
    return suggested((x.shape[0], w.shape[0], *spatial), x, channels_last(x) or channels_last(w))


def linear(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x, w, bias = bound(("input", "weight", "bias"), args, kwargs)
    if not (is_meta_float(x) and isinstance(w, torch.Tensor) and w.is_meta and w.ndim == 2 and x.ndim >= 1):
        return None
    if x.shape[-1] != w.shape[1]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({x.numel() // max(x.shape[-1], 1)}x"
                           f"{x.shape[-1]} and {w.shape[1]}x{w.shape[0]})")
    sized("bias", bias, w.shape[0])
    return empty_contiguous((*x.shape[:-1], w.shape[0]), x)


def _reduce(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``mean``/``sum``/``amax`` over given dims."""
    x = args[0] if args else None
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
    if not is_meta_float(x) or dims is None or set(kwargs) - {"dim", "keepdim"} or len(args) > 3:
        return None
    dims = {d % x.ndim for d in ((dims,) if isinstance(dims, int) else dims)}
    shape = [1 if d in dims else s for d, s in enumerate(x.shape) if keep or d not in dims]
    return empty(shape, x)


def _norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``x.norm(p, dim, keepdim)``/``linalg.vector_norm`` over dims (ConvNeXt-V2's GRN): a reduction."""
    x, p, dims, keep = bound(("input", "p", "dim", "keepdim"), args, {("p" if k == "ord" else k): v for k, v in kwargs.items()})
    if len(args) > 4 or type(p) not in (int, float, type(None)) or any(  # torch.norm passes dtype=None
            v is not None for k, v in kwargs.items() if k not in ("p", "ord", "dim", "keepdim")):
        return None
    return _reduce((x, dims, bool(keep)), {})


def _cat(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``cat(tensors, dim)`` (DenseNet's concatenations: 1 ms each as a meta decomposition)."""
    tensors = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(tensors, (list, tuple)) or not tensors or set(kwargs) - {"tensors", "dim"} or not all(
            is_meta_float(t) for t in tensors) or len({(t.ndim, t.dtype) for t in tensors}) != 1 or not isinstance(dim, int):
        return None
    first = tensors[0]
    d = dim % first.ndim
    for t in tensors[1:]:
        if any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != d):
            raise RuntimeError(f"Sizes of tensors must match except in dimension {d}. Expected size "
                               f"{list(first.shape)} but got size {list(t.shape)} for a tensor in the list")
    shape = list(first.shape)
    shape[d] = sum(t.shape[d] for t in tensors)
    return suggested(shape, first, all(channels_last(t) for t in tensors))


def _adaptive_pool(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x = args[0] if args else kwargs.get("input")
    size = args[1] if len(args) > 1 else kwargs.get("output_size")
    if not is_meta_float(x) or size is None or len(args) > 2 or set(kwargs) - {"input", "output_size"}:
        return None
    n = x.ndim - 2 if x.ndim > 2 else 1
    size = as_tuple(size, n)
    if len(size) != n or x.ndim < n + 1:
        return None
    return suggested((*x.shape[:-n], *(s if o is None else o for s, o in zip(x.shape[-n:], size))), x, channels_last(x))


def _matmul(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``matmul``/``@`` of two tensors of 2+ dims (batch dims broadcast); 1-D operands and
    ``out=`` take the ordinary path."""
    if len(args) != 2 or kwargs:
        return None
    a, b = args
    if not (is_meta_float(a) and is_meta_float(b)) or a.dtype != b.dtype or a.ndim < 2 or b.ndim < 2:
        return None
    if a.shape[-1] != b.shape[-2]:
        raise RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: [*, {a.shape[-1]}] "
                           f"but got: {list(b.shape)} (matmul of {list(a.shape)} and {list(b.shape)})")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return empty_contiguous((*batch, a.shape[-2], b.shape[-1]), a)


def _bmm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    if len(args) != 2 or kwargs or not all(is_meta_float(t) and t.ndim == 3 for t in args):
        return None
    a, b = args
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1] or a.dtype != b.dtype:
        raise RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: [{a.shape[0]}, "
                           f"{a.shape[2]}] but got: [{b.shape[0]}, {b.shape[1]}].")
    return empty_contiguous((a.shape[0], a.shape[1], b.shape[2]), a)


def _normalize(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``F.normalize`` (swiftformer, edgenext: ~1.5 ms a call as meta decompositions)."""
    x, _, dim, _, out = bound(("input", "p", "dim", "eps", "out"), args, kwargs)
    dim = 1 if dim is None else dim
    if not is_meta_float(x) or out is not None or not isinstance(dim, int) or x.ndim == 0:
        return None
    if not -x.ndim <= dim < x.ndim:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-x.ndim}, {x.ndim - 1}], but got {dim})")
    return empty(x.shape, x)


_INTERPOLATE_DIMS = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}


def _interpolate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``F.interpolate`` by ``size`` or ``scale_factor`` (csatv2: ~10 ms a call as a meta
    decomposition); unusual combinations take the ordinary path, which raises as the op does."""
    x, size, scale, mode, _, _, _ = bound(("input", "size", "scale_factor", "mode", "align_corners",
                                            "recompute_scale_factor", "antialias"), args, kwargs)
    mode = "nearest" if mode is None else mode
    if not is_meta_float(x) or not 3 <= x.ndim <= 5 or (size is None) == (scale is None):
        return None
    n = x.ndim - 2
    if _INTERPOLATE_DIMS.get(mode, n) != n:
        return None
    if size is not None:
        out = as_tuple(size, n)
    else:
        out = tuple(math.floor(s * f) for s, f in zip(x.shape[2:], as_tuple(scale, n)))
    if len(out) != n or not all(isinstance(o, int) and o > 0 for o in out):
        return None
    return suggested((*x.shape[:2], *out), x, channels_last(x))


def _roll(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``roll`` (Swin's shifted windows: ~1 ms a call on meta): along given dims it keeps the
    input's layout, flattened it is contiguous."""
    x, shifts, dims = bound(("input", "shifts", "dims"), args, kwargs)
    if not is_meta_float(x) or shifts is None:
        return None
    shifts, dims = as_tuple(shifts, 1), () if dims is None else as_tuple(dims, 1)
    if not all(isinstance(v, int) for v in shifts + dims):
        return None
    if not dims:
        return empty_contiguous(x.shape, x) if len(shifts) == 1 else None
    if len(shifts) != len(dims):
        raise RuntimeError(f"shifts and dimensions must align. shifts: {len(shifts)}, dims:{len(dims)}")
    if not all(-x.ndim <= d < x.ndim for d in dims):
        return None  # the ordinary path raises its own error
    return empty(x.shape, x)


def _masked_fill(args: tuple[Any, ...], kwargs: dict[str, Any], *, inplace: bool) -> torch.Tensor | None:
    """``masked_fill`` (Swin's attention masks): the mask broadcasts to the input; a new
    contiguous tensor, or the input itself in place."""
    x, mask, value = bound(("input", "mask", "value"), args, kwargs)
    if not is_meta_float(x) or not (isinstance(mask, torch.Tensor) and mask.is_meta and mask.dtype == torch.bool):
        return None
    if not (type(value) in (int, float, bool) or isinstance(value, torch.Tensor) and value.ndim == 0):
        return None
    if broadcast_shapes(x.shape, mask.shape) != x.shape:
        raise RuntimeError(f"masked_fill: mask of shape {list(mask.shape)} does not broadcast to {list(x.shape)}")
    return x if inplace else empty_contiguous(x.shape, x)


def _addcmul(args: tuple[Any, ...], kwargs: dict[str, Any], *, inplace: bool) -> torch.Tensor | None:
    """``addcmul``/``addcdiv`` (ConvNeXt-V2's GRN): ``input + value * t1 (*|/) t2``, as a binary op."""
    if len(args) != 3 or set(kwargs) - {"value"} or type(kwargs.get("value", 1)) not in (int, float):
        return None
    if not all(is_meta_float(t) for t in args) or len({t.dtype for t in args}) != 1:
        return None
    shape = broadcast_shapes(broadcast(list(args[:2])), args[2].shape)  # raises as the real op would
    if inplace:
        if shape != args[0].shape:
            raise RuntimeError(f"output with shape {list(args[0].shape)} doesn't match the broadcast shape {list(shape)}")
        return args[0]
    return empty(shape, next((t for t in args if t.shape == shape), args[0]))


Handler = Callable[[tuple[Any, ...], dict[str, Any]], "torch.Tensor | None"]
_FAST: dict[Any, Handler] = {
    **{f: functools.partial(_binary, inplace=inplace) for f, inplace in _BINARY.items()},
    **{f: functools.partial(_unary, inplace=inplace) for f, inplace in _UNARY.items()},
    **{f: functools.partial(_unary, inplace=inplace, contiguous=True) for f, inplace in _UNARY_CONTIGUOUS.items()},
    torch.Tensor.contiguous: _make_contiguous,
    F.batch_norm: batch_norm, torch.batch_norm: batch_norm, F.layer_norm: _layer_norm,
    torch.layer_norm: _layer_norm, F.rms_norm: _rms_norm, torch.rms_norm: _rms_norm,
    torch.Tensor.new_empty: _new_empty, F.group_norm: _group_norm, torch.group_norm: _group_norm,
    F.conv1d: conv, F.conv2d: conv, F.conv3d: conv, F.linear: linear,
    F.adaptive_avg_pool1d: _adaptive_pool, F.adaptive_avg_pool2d: _adaptive_pool, F.adaptive_avg_pool3d: _adaptive_pool,
    **{getattr(ns, name): _reduce for ns in (torch, torch.Tensor) for name in ("mean", "sum", "amax", "amin")},
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat,
    torch.matmul: _matmul, torch.Tensor.matmul: _matmul, torch.Tensor.__matmul__: _matmul,
    torch.bmm: _bmm, torch.Tensor.bmm: _bmm, F.scaled_dot_product_attention: attention, F.normalize: _normalize,
    F.interpolate: _interpolate, F.multi_head_attention_forward: multi_head_attention,
    torch.roll: _roll, torch.Tensor.roll: _roll, torch.masked_fill: functools.partial(_masked_fill, inplace=False),
    torch.Tensor.masked_fill: functools.partial(_masked_fill, inplace=False),
    torch.Tensor.masked_fill_: functools.partial(_masked_fill, inplace=True),
    **{f: functools.partial(_addcmul, inplace=inplace) for f, inplace in _targets(("addcmul", "addcdiv")).items()},
    torch.norm: _norm, torch.Tensor.norm: _norm, torch.linalg.vector_norm: _norm,
}


class FastMeta(TorchFunctionMode):
    """Shape-only answers for common ops on meta tensors (see the module docstring)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        handler = _FAST.get(func)
        out = None if handler is None else handler(args, kwargs)
        return out if out is not None else func(*args, **kwargs)
