"""Run a model's own forward on the meta device at the cost of its Python code, not its kernels.

The shape pass and the self-check run models on the meta device. There, many ops cost 0.5-10 ms
each, because torch computes their meta result with Python decompositions (``batch_norm`` 9 ms,
``interpolate`` 10 ms, ``add`` 1 ms), while only the output's shape, dtype and layout and the
checks that a real kernel would make matter. :class:`FastMeta` answers the common ones
(element-wise arithmetic, activations, norms, convolutions, linear layers, reductions, adaptive
pooling, cat, matrix products, attention, multi-head attention, normalize, interpolate, ``roll``, ``masked_fill``, ``new_empty``) directly: the same
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

__all__ = ["FastMeta", "shape_call", "shape_forward"]

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


def _empty(shape: Any, like: torch.Tensor) -> torch.Tensor:
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


def _contiguous(shape: Any, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=like.dtype, device="meta")


def _channels_last(t: torch.Tensor) -> bool:
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


def _suggested(shape: Any, like: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """What kernels that pick a memory format write (convolution, pooling, BatchNorm, cat):
    channels-last when their inputs are, else contiguous, never another permutation."""
    if channels_last and len(shape) == 4:
        return torch.empty(tuple(shape), dtype=like.dtype, device="meta", memory_format=torch.channels_last)
    return _contiguous(shape, like)


def _is_meta_float(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.is_meta and t.is_floating_point()


def _broadcast(tensors: list[torch.Tensor]) -> torch.Size:
    """``torch.broadcast_shapes`` of one or two tensors: equal shapes (a residual add) cost a
    comparison, other shapes a few list operations; ``torch.broadcast_shapes`` runs torch's Python
    reference at ~0.1 ms a call. Raises as the real op would."""
    first = tensors[0].shape
    if len(tensors) == 1 or tensors[1].shape == first:
        return first
    return _broadcast_shapes(first, tensors[1].shape)


def _broadcast_shapes(first: Any, second: Any) -> torch.Size:
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


def _binary(args: tuple[Any, ...], kwargs: dict[str, Any], *, inplace: bool) -> torch.Tensor | None:
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


def _unary(args: tuple[Any, ...], kwargs: dict[str, Any], *, inplace: bool,
           contiguous: bool = False) -> torch.Tensor | None:
    if not args or not _is_meta_float(args[0]) or kwargs.get("dtype") is not None or "memory_format" in kwargs:
        return None
    x = args[0]
    if inplace or kwargs.get("inplace") or (len(args) > 1 and args[-1] is True):
        return x
    return _contiguous(x.shape, x) if contiguous else _empty(x.shape, x)


def _make_contiguous(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``x.contiguous()``: ``x`` itself when it is, else a contiguous copy (other memory formats:
    the ordinary path)."""
    if len(args) != 1 or kwargs or not _is_meta_float(args[0]):
        return None
    x = args[0]
    return x if x.is_contiguous() else _contiguous(x.shape, x)


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
    return _suggested(x.shape, x, _channels_last(x))


def _layer_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x, shape, weight, bias = _bound(("input", "normalized_shape", "weight", "bias"), args, kwargs)
    if not _is_meta_float(x):
        return None
    _normalized_shape(x, shape, weight=weight, bias=bias)
    return _contiguous(x.shape, x)  # the kernel writes a contiguous output


def _rms_norm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``rms_norm`` (AIMv2: ~1 ms a call as a meta decomposition): layer norm's checks, no bias,
    and an element-wise op's layout."""
    x, shape, weight = _bound(("input", "normalized_shape", "weight"), args, kwargs)
    if not _is_meta_float(x):
        return None
    _normalized_shape(x, shape, weight=weight)
    return _empty(x.shape, x)


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
    x, groups, weight, bias = _bound(("input", "num_groups", "weight", "bias"), args, kwargs)
    if not _is_meta_float(x) or x.ndim < 2 or not isinstance(groups, int):
        return None
    if groups <= 0 or x.shape[1] % groups:
        raise RuntimeError(f"Expected number of channels in input to be divisible by num_groups, but got input "
                           f"of shape {list(x.shape)} and num_groups={groups}")
    _sized("weight", weight, x.shape[1])
    _sized("bias", bias, x.shape[1])
    return _contiguous(x.shape, x)  # the kernel writes a contiguous output


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
    return _suggested((x.shape[0], w.shape[0], *spatial), x, _channels_last(x) or _channels_last(w))


def _linear(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x, w, bias = _bound(("input", "weight", "bias"), args, kwargs)
    if not (_is_meta_float(x) and isinstance(w, torch.Tensor) and w.is_meta and w.ndim == 2 and x.ndim >= 1):
        return None
    if x.shape[-1] != w.shape[1]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({x.numel() // max(x.shape[-1], 1)}x"
                           f"{x.shape[-1]} and {w.shape[1]}x{w.shape[0]})")
    _sized("bias", bias, w.shape[0])
    return _contiguous((*x.shape[:-1], w.shape[0]), x)


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
    return _suggested(shape, first, all(_channels_last(t) for t in tensors))


def _adaptive_pool(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    x = args[0] if args else kwargs.get("input")
    size = args[1] if len(args) > 1 else kwargs.get("output_size")
    if not _is_meta_float(x) or size is None or len(args) > 2 or set(kwargs) - {"input", "output_size"}:
        return None
    n = x.ndim - 2 if x.ndim > 2 else 1
    size = _tuple(size, n)
    if len(size) != n or x.ndim < n + 1:
        return None
    return _suggested((*x.shape[:-n], *(s if o is None else o for s, o in zip(x.shape[-n:], size))), x, _channels_last(x))


def _matmul(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``matmul``/``@`` of two tensors of 2+ dims (batch dims broadcast); 1-D operands and
    ``out=`` take the ordinary path."""
    if len(args) != 2 or kwargs:
        return None
    a, b = args
    if not (_is_meta_float(a) and _is_meta_float(b)) or a.dtype != b.dtype or a.ndim < 2 or b.ndim < 2:
        return None
    if a.shape[-1] != b.shape[-2]:
        raise RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: [*, {a.shape[-1]}] "
                           f"but got: {list(b.shape)} (matmul of {list(a.shape)} and {list(b.shape)})")
    batch = _broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return _contiguous((*batch, a.shape[-2], b.shape[-1]), a)


def _bmm(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    if len(args) != 2 or kwargs or not all(_is_meta_float(t) and t.ndim == 3 for t in args):
        return None
    a, b = args
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1] or a.dtype != b.dtype:
        raise RuntimeError(f"Expected size for first two dimensions of batch2 tensor to be: [{a.shape[0]}, "
                           f"{a.shape[2]}] but got: [{b.shape[0]}, {b.shape[1]}].")
    return _contiguous((a.shape[0], a.shape[1], b.shape[2]), a)


_SDPA_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _attention(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``scaled_dot_product_attention`` (a ViT block's: ~2 ms as a meta decomposition): query
    ``(*B, L, E)``, key ``(*B, S, E)``, value ``(*B, S, Ev)`` → ``(*B, L, Ev)``; the mask must
    broadcast to ``(*B, L, S)``. Grouped-query attention and batch dims that differ between
    query, key and value take the ordinary path."""
    q, k, v, mask, _, _, _, gqa = _bound(_SDPA_NAMES, args, kwargs)
    if gqa or not all(_is_meta_float(t) for t in (q, k, v)) or len({(t.ndim, t.dtype) for t in (q, k, v)}) != 1:
        return None
    if q.ndim < 2 or q.shape[:-2] != k.shape[:-2] or k.shape[:-2] != v.shape[:-2]:
        return None
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise RuntimeError(f"scaled_dot_product_attention: query {list(q.shape)}, key {list(k.shape)} and value "
                           f"{list(v.shape)} do not fit (query and key need the same last size, key and value the "
                           "same length)")
    if mask is not None:
        if not (isinstance(mask, torch.Tensor) and mask.is_meta):
            return None
        scores = (*q.shape[:-1], k.shape[-2])
        if _broadcast_shapes(mask.shape, scores) != torch.Size(scores):
            raise RuntimeError(f"scaled_dot_product_attention: attn_mask of shape {list(mask.shape)} does not "
                               f"broadcast to {list(scores)}")
    return _empty((*q.shape[:-1], v.shape[-1]), q)  # the CPU kernel writes in the layout of the query


def _normalize(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``F.normalize`` (swiftformer, edgenext: ~1.5 ms a call as meta decompositions)."""
    x, _, dim, _, out = _bound(("input", "p", "dim", "eps", "out"), args, kwargs)
    dim = 1 if dim is None else dim
    if not _is_meta_float(x) or out is not None or not isinstance(dim, int) or x.ndim == 0:
        return None
    if not -x.ndim <= dim < x.ndim:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-x.ndim}, {x.ndim - 1}], but got {dim})")
    return _empty(x.shape, x)


_INTERPOLATE_DIMS = {"linear": 1, "bilinear": 2, "bicubic": 2, "trilinear": 3}


def _interpolate(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``F.interpolate`` by ``size`` or ``scale_factor`` (csatv2: ~10 ms a call as a meta
    decomposition); unusual combinations take the ordinary path, which raises as the op does."""
    x, size, scale, mode, _, _, _ = _bound(("input", "size", "scale_factor", "mode", "align_corners",
                                            "recompute_scale_factor", "antialias"), args, kwargs)
    mode = "nearest" if mode is None else mode
    if not _is_meta_float(x) or not 3 <= x.ndim <= 5 or (size is None) == (scale is None):
        return None
    n = x.ndim - 2
    if _INTERPOLATE_DIMS.get(mode, n) != n:
        return None
    if size is not None:
        out = _tuple(size, n)
    else:
        out = tuple(math.floor(s * f) for s, f in zip(x.shape[2:], _tuple(scale, n)))
    if len(out) != n or not all(isinstance(o, int) and o > 0 for o in out):
        return None
    return _suggested((*x.shape[:2], *out), x, _channels_last(x))


def _roll(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """``roll`` (Swin's shifted windows: ~1 ms a call on meta): along given dims it keeps the
    input's layout, flattened it is contiguous."""
    x, shifts, dims = _bound(("input", "shifts", "dims"), args, kwargs)
    if not _is_meta_float(x) or shifts is None:
        return None
    shifts, dims = _tuple(shifts, 1), () if dims is None else _tuple(dims, 1)
    if not all(isinstance(v, int) for v in shifts + dims):
        return None
    if not dims:
        return _contiguous(x.shape, x) if len(shifts) == 1 else None
    if len(shifts) != len(dims):
        raise RuntimeError(f"shifts and dimensions must align. shifts: {len(shifts)}, dims:{len(dims)}")
    if not all(-x.ndim <= d < x.ndim for d in dims):
        return None  # the ordinary path raises its own error
    return _empty(x.shape, x)


def _masked_fill(args: tuple[Any, ...], kwargs: dict[str, Any], *, inplace: bool) -> torch.Tensor | None:
    """``masked_fill`` (Swin's attention masks): the mask broadcasts to the input; a new
    contiguous tensor, or the input itself in place."""
    x, mask, value = _bound(("input", "mask", "value"), args, kwargs)
    if not _is_meta_float(x) or not (isinstance(mask, torch.Tensor) and mask.is_meta and mask.dtype == torch.bool):
        return None
    if not (type(value) in (int, float, bool) or isinstance(value, torch.Tensor) and value.ndim == 0):
        return None
    if _broadcast_shapes(x.shape, mask.shape) != x.shape:
        raise RuntimeError(f"masked_fill: mask of shape {list(mask.shape)} does not broadcast to {list(x.shape)}")
    return x if inplace else _contiguous(x.shape, x)


_MHA_NAMES = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
              "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
              "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
              "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")


def _multi_head_attention(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, Any] | None:
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention`` on meta: ~5 ms a call, its body
    running plain meta kernels) for batched (L, N, E) inputs with one packed input projection and
    no extra key/value biases: its size checks, then (L, N, E_out) and the attention weights."""
    (q, k, v, embed_dim, heads, in_w, in_b, bias_k, bias_v, zero_attn, _, out_w, out_b, _, padding, need_weights,
     mask, separate, *_, static_k, static_v, average, _) = _bound(_MHA_NAMES, args, kwargs)
    tensors = (q, k, v, in_w, out_w)
    if not all(_is_meta_float(t) for t in tensors) or q.ndim != 3 or k.ndim != 3 or v.ndim != 3 or any(
            t is not None for t in (bias_k, bias_v, static_k, static_v, padding, mask)) or zero_attn or separate:
        return None
    if not isinstance(embed_dim, int) or not isinstance(heads, int) or heads <= 0:
        return None
    if q.shape[2] != embed_dim:
        raise AssertionError(f"was expecting embedding dimension of {embed_dim}, but got {q.shape[2]}")
    if embed_dim % heads:
        raise AssertionError(f"embed_dim {embed_dim} not divisible by num_heads {heads}")
    if k.shape != v.shape or k.shape[1] != q.shape[1] or k.shape[2] != embed_dim:
        raise AssertionError(f"key shape {tuple(k.shape)} does not match value shape {tuple(v.shape)}")
    if tuple(in_w.shape) != (3 * embed_dim, embed_dim) or out_w.ndim != 2 or out_w.shape[1] != embed_dim:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied (in_proj_weight {list(in_w.shape)}, "
                           f"out_proj_weight {list(out_w.shape)}, embed_dim {embed_dim})")
    _sized("in_proj_bias", in_b, 3 * embed_dim)
    _sized("out_proj_bias", out_b, out_w.shape[0])
    out = _contiguous((q.shape[0], q.shape[1], out_w.shape[0]), q)
    if not need_weights:
        return out, None
    weights = (q.shape[1], q.shape[0], k.shape[0]) if average or average is None else (q.shape[1], heads, q.shape[0], k.shape[0])
    return out, _contiguous(weights, q)


Handler = Callable[[tuple[Any, ...], dict[str, Any]], "torch.Tensor | None"]
_FAST: dict[Any, Handler] = {
    **{f: functools.partial(_binary, inplace=inplace) for f, inplace in _BINARY.items()},
    **{f: functools.partial(_unary, inplace=inplace) for f, inplace in _UNARY.items()},
    **{f: functools.partial(_unary, inplace=inplace, contiguous=True) for f, inplace in _UNARY_CONTIGUOUS.items()},
    torch.Tensor.contiguous: _make_contiguous,
    F.batch_norm: _batch_norm, torch.batch_norm: _batch_norm, F.layer_norm: _layer_norm,
    torch.layer_norm: _layer_norm, F.rms_norm: _rms_norm, torch.rms_norm: _rms_norm,
    torch.Tensor.new_empty: _new_empty, F.group_norm: _group_norm, torch.group_norm: _group_norm,
    F.conv1d: _conv, F.conv2d: _conv, F.conv3d: _conv, F.linear: _linear,
    F.adaptive_avg_pool1d: _adaptive_pool, F.adaptive_avg_pool2d: _adaptive_pool, F.adaptive_avg_pool3d: _adaptive_pool,
    **{getattr(ns, name): _reduce for ns in (torch, torch.Tensor) for name in ("mean", "sum", "amax", "amin")},
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat,
    torch.matmul: _matmul, torch.Tensor.matmul: _matmul, torch.Tensor.__matmul__: _matmul,
    torch.bmm: _bmm, torch.Tensor.bmm: _bmm, F.scaled_dot_product_attention: _attention, F.normalize: _normalize,
    F.interpolate: _interpolate, F.multi_head_attention_forward: _multi_head_attention,
    torch.roll: _roll, torch.Tensor.roll: _roll, torch.masked_fill: functools.partial(_masked_fill, inplace=False),
    torch.Tensor.masked_fill: functools.partial(_masked_fill, inplace=False),
    torch.Tensor.masked_fill_: functools.partial(_masked_fill, inplace=True),
}


class FastMeta(TorchFunctionMode):
    """Shape-only answers for common ops on meta tensors (see the module docstring)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        handler = _FAST.get(func)
        out = None if handler is None else handler(args, kwargs)
        return out if out is not None else func(*args, **kwargs)


# -- module forwards ---------------------------------------------------------------------------
# The self-check runs each switch's forward three times per conversion; torch's and timm's own
# layers spend most of that in Python around the op (``_conv_forward``, timm's BatchNormAct2d with
# its asserts, its act and drop). For exact classes, :func:`shape_forward` gives a forward that
# makes the same size checks and returns the empty output directly (and the shape pass calls
# :func:`shape_call` for its leaf modules).

def _conv_module(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    if m.padding_mode != "zeros":
        return None
    return _conv((x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups), {})


def _linear_module(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    return _linear((x, m.weight, m.bias), {})


def _batch_norm_module(dims: tuple[int, ...]) -> Callable[[Any, torch.Tensor], torch.Tensor | None]:
    def forward(m: Any, x: torch.Tensor) -> torch.Tensor | None:
        if x.ndim not in dims:
            raise ValueError(f"expected {' or '.join(f'{d}D' for d in dims)} input (got {x.ndim}D input)")
        return _batch_norm((x, m.running_mean, m.running_var, m.weight, m.bias), {})
    return forward


def _batch_norm_act(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    """timm's BatchNormAct2d: batch norm, then its drop and act, when both keep the shape."""
    if type(m.act) not in _SHAPE_KEEPING or type(m.drop) not in _SHAPE_KEEPING:
        return None
    if x.ndim != 4:
        raise AssertionError(f"expected 4D input (got {x.ndim}D input)")
    return _batch_norm((x, m.running_mean, m.running_var, m.weight, m.bias), {})


def _activation(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    """A new tensor laid out like ``x``, or ``x`` itself in place."""
    if not _is_meta_float(x):
        return None
    return x if getattr(m, "inplace", False) else _empty(x.shape, x)


def _passthrough(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    """Identity, and dropout in eval mode: ``x`` itself."""
    return None if m.training and not isinstance(m, torch.nn.Identity) else x


_ACTIVATIONS = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.SiLU, torch.nn.GELU, torch.nn.Hardswish, torch.nn.Hardsigmoid,
                torch.nn.Sigmoid, torch.nn.Tanh, torch.nn.Mish)
_SHAPE_KEEPING = frozenset(_ACTIVATIONS + (torch.nn.Identity, torch.nn.Dropout))


@functools.lru_cache(maxsize=1)
def _module_forwards() -> dict[type, Callable[[Any, torch.Tensor], torch.Tensor | None]]:
    nn = torch.nn
    found: dict[type, Callable[[Any, torch.Tensor], torch.Tensor | None]] = {
        nn.Conv1d: _conv_module, nn.Conv2d: _conv_module, nn.Conv3d: _conv_module, nn.Linear: _linear_module,
        nn.BatchNorm1d: _batch_norm_module((2, 3)), nn.BatchNorm2d: _batch_norm_module((4,)),
        nn.BatchNorm3d: _batch_norm_module((5,)), **dict.fromkeys(_ACTIVATIONS, _activation),
        nn.Identity: _passthrough, nn.Dropout: _passthrough,
    }
    try:
        from timm.layers import BatchNormAct2d
    except ImportError:
        return found
    found[BatchNormAct2d] = _batch_norm_act
    return found


def shape_call(module: Any, cls: type, x: Any) -> torch.Tensor | None:
    """``module(x)`` on a meta tensor for a module of exact class ``cls`` (its class before any
    rewrite): the size checks of its forward, then the empty output; ``None`` where it has no
    such shortcut (class, padding mode, a non-meta input)."""
    fast = _module_forwards().get(cls)
    if fast is None or not isinstance(x, torch.Tensor):
        return None
    with torch._C.DisableTorchFunction():  # as inside FastMeta: no mode call per ``x.shape``
        return fast(module, x) if x.is_meta else None


def shape_forward(module: Any, cls: type) -> Callable[..., Any] | None:
    """A forward for ``module`` that takes :func:`shape_call`'s shortcut where it can, else runs
    the ordinary one; ``None`` where ``cls`` has no shortcut."""
    if cls not in _module_forwards():
        return None
    ordinary = cls.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        out = shape_call(module, cls, args[0]) if len(args) == 1 and not kwargs else None
        return out if out is not None else ordinary(module, *args, **kwargs)

    return forward
