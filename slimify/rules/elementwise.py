"""Rules for ops that keep channels where they are: elementwise math, activations, pooling,
reductions and tensor creation."""
from __future__ import annotations

from typing import Any

import numpy as np

from slimify.rules.base import RuleContext, TensorVal, tensors_in
from slimify.rules.registry import rule

__all__ = ["elementwise", "passthrough", "reduction", "creation", "fixed_output"]


def _aligned(t: TensorVal, ndim: int) -> tuple[np.ndarray, tuple[int, ...]]:
    pad = ndim - t.ndim
    return t.label.reshape((1,) * pad + t.label.shape), (1,) * pad + tuple(t.shape)


@rule("add", "sub", "mul", "div", "truediv", "true_divide", "floordiv", "pow", "maximum", "minimum", "where", "clamp",
      "clip", "clamp_min", "clamp_max", "lerp", "addcmul", "addcdiv", "masked_fill", "iadd", "isub", "imul", "itruediv",
      "add_", "sub_", "mul_", "div_", "clamp_", "masked_fill_", "rsub", "fmod", "remainder", "atan2", "hypot")
def elementwise(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """Broadcasting math (residual add, SE gating mul…): elements meeting at one output
    position must be active together. An operand broadcast across channels (a drop-path mask,
    a spatial attention map, a scalar) keeps its size and constrains nothing else."""
    out_shape = tuple(ctx.out_shape)
    n = len(out_shape)
    values = [ctx.tensor(t) for t in tensors_in([args, kwargs])]
    operands = [_aligned(t, n) + (frozenset(r + n - t.ndim for r in t.rigid),) for t in values]
    operands = [op for op in operands if len(op[1]) == n]
    all_rigid = set().union(*(r for _, _, r in operands))
    shared = ctx.shared_across([lab for lab, _, _ in operands], [real for _, real, _ in operands], all_rigid)
    taking = []
    for (lab, _real, rigid), is_shared in zip(operands, shared):
        if is_shared:  # a scalar gain, a spatial map, a rotary table shared by all heads
            ctx.space.fix(lab, f"broadcast across channels at {ctx.space.context}")
            continue
        taking.append((lab, rigid))
    if not taking:
        return ctx.fixed(out_shape)
    first = taking[0][0]
    for lab, _ in taking[1:]:
        ctx.space.union(first, lab)
    joint = np.broadcast_shapes(*(lab.shape for lab, _ in taking))
    rigid = frozenset().union(*(r for _, r in taking))
    label = np.broadcast_to(first, joint)
    for d in range(n):  # an operand constant along d was tied to every position along it:
        if label.shape[d] > 1 and min(lab.shape[d] for lab, _ in taking) == 1:  # one class there
            label = label[(slice(None),) * d + (slice(0, 1),)]
    return TensorVal(label.copy(), out_shape, rigid)


@rule("relu", "relu_", "relu6", "gelu", "silu", "silu_", "hardswish", "hardsigmoid", "mish", "leaky_relu", "elu",
      "selu", "celu", "softplus", "hardtanh", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "exp_", "log", "sqrt",
      "rsqrt", "abs", "neg", "erf", "sin", "cos", "reciprocal", "sign", "square", "logit", "dropout", "dropout1d",
      "dropout2d", "dropout3d", "alpha_dropout", "softmax", "log_softmax", "normalize", "interpolate", "upsample",
      "upsample_nearest", "upsample_bilinear", "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
      "max_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
      "adaptive_max_pool2d", "lp_pool2d", "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to",
      "type_as", "type", "zeros_like", "ones_like", "empty_like", "rand_like", "randn_like", "full_like", "pos",
      "nan_to_num", "hard_sigmoid", "hard_swish", "swish", "requires_grad_",
      "torchvision.ops:stochastic_depth")
def passthrough(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """One tensor in, same channels out (activations, pooling, dropout, interpolation)."""
    x = ctx.tensor(next(tensors_in(args)))
    out_shape = tuple(ctx.out_shape)
    if len(out_shape) != x.ndim:
        return reshape_fallback(ctx, x, out_shape)
    label = x.label
    for d in range(x.ndim):
        if label.shape[d] > 1 and out_shape[d] != x.shape[d]:  # a varying dim changes size
            _union_along(ctx, label, d)
            label = np.take(label, [0], axis=d)
    return TensorVal(label.copy(), out_shape, x.rigid)


def _union_along(ctx: RuleContext, label: np.ndarray, dim: int) -> None:
    moved = np.moveaxis(label, dim, -1)
    ctx.space.union(moved[..., :1], moved)


def reshape_fallback(ctx: RuleContext, x: TensorVal, out_shape: tuple[int, ...]) -> TensorVal:
    from slimify.rules.reshape import reshape_to
    return reshape_to(ctx, x, out_shape, None)


@rule("mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "prod")  # norm: norms.p_norm (p comes first)
def reduction(ctx: RuleContext, args: list, kwargs: dict) -> Any:
    """``mean``/``sum``/``amax``… over some dims. Reducing across channels (CBAM's channel
    mean) gives a value that is no channel at all; reducing a dim inside a unit (head_dim)
    keeps the unit's id."""
    x = ctx.tensor(args[0])
    dims = kwargs.get("dim", args[1] if len(args) > 1 and not isinstance(args[1], bool) else None)
    keepdim = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False))
    out_shape = ctx.out_shape
    if isinstance(out_shape, tuple) and out_shape and not isinstance(out_shape[0], int):
        out_shape = out_shape[0]  # max(dim) returns (values, indices)
    if dims is None:
        return ctx.fixed(tuple(out_shape))
    dims = [d % x.ndim for d in ([dims] if isinstance(dims, int) else dims)]
    label = x.label
    rest_varies = any(label.shape[d] > 1 for d in range(x.ndim) if d not in dims)
    for d in sorted(dims, reverse=True):
        if label.shape[d] > 1:
            if not rest_varies:
                return ctx.fixed(tuple(out_shape))
            _union_along(ctx, label, d)
        label = np.take(label, [0], axis=d)
        if not keepdim:
            label = label.squeeze(d)
    rigid = frozenset(r - sum(1 for d in dims if d < r) for r in x.rigid if r not in dims) if not keepdim else x.rigid
    result = TensorVal(label.copy(), tuple(out_shape), rigid)
    shape = ctx.out_shape
    if isinstance(shape, tuple) and shape and not isinstance(shape[0], int):
        return (result, ctx.fixed(tuple(shape[1])))
    return result


@rule("zeros", "ones", "full", "empty", "arange", "rand", "randn", "randint", "linspace", "new_zeros", "new_ones",
      "new_full", "new_empty", "new_tensor", "tensor", "bernoulli_", "bernoulli", "div_by_keep", "eye", "meshgrid")
def creation(ctx: RuleContext, args: list, kwargs: dict) -> TensorVal:
    """``torch.zeros``, ``new_ones``, ``arange``…: new tensors that are not channels."""
    return fixed_output(ctx)


def fixed_output(ctx: RuleContext) -> Any:
    def make(shape: Any) -> Any:
        if shape is None:
            return None
        if isinstance(shape, (tuple, list)) and shape and not isinstance(shape[0], int):
            return type(shape)(make(s) for s in shape)
        return ctx.fixed(tuple(shape))
    return make(ctx.out_shape)
