"""The op → channel-flow rule table (STYLE.md lesson 1): adding support for an op is adding
one entry here. Ops without an entry are boundaries: they fix the channels they touch."""
from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from slimify.rules import elementwise as ew
from slimify.rules import attention, linalg, notrace, recurrent, segments, shape, windows  # noqa: F401 - module rules
from slimify.rules import instance_norm  # noqa: F401 - module rules
from slimify.rules.base import FunctionRule, ParamVal, RuleContext, TensorVal
from slimify.rules.modules import MODULE_RULES, find_module_rule, find_module_rule_by_mro, module_rule, unknown_module

__all__ = ["FUNCTION_RULES", "METHOD_RULES", "MODULE_RULES", "find_module_rule", "find_function_rule",
           "module_rule", "unknown_module", "RuleContext", "TensorVal", "ParamVal"]

# names expanded over torch, torch.Tensor methods, torch.nn.functional and operator → rule
_BY_NAME: dict[Callable[..., Any], tuple[str, ...]] = {
    ew.elementwise: (
        "add", "sub", "mul", "div", "truediv", "true_divide", "floordiv", "pow", "maximum", "minimum",
        "where", "clamp", "clip", "clamp_min", "clamp_max", "lerp", "addcmul", "addcdiv", "masked_fill",
        "iadd", "isub", "imul", "itruediv", "add_", "sub_", "mul_", "div_", "clamp_", "masked_fill_",
        "rsub", "fmod", "remainder", "atan2", "hypot",
    ),
    ew.passthrough: (
        "relu", "relu_", "relu6", "gelu", "silu", "silu_", "hardswish", "hardsigmoid", "mish", "leaky_relu",
        "elu", "selu", "celu", "softplus", "hardtanh", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "exp_",
        "log", "sqrt", "rsqrt", "abs", "neg", "erf", "sin", "cos", "reciprocal", "sign", "square", "logit",
        "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "softmax", "log_softmax",
        "normalize", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
        "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d",
        "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
        "adaptive_max_pool2d", "lp_pool2d", "contiguous", "clone", "detach", "float", "half", "double",
        "bfloat16", "to", "type_as", "type", "zeros_like", "ones_like", "empty_like", "rand_like",
        "randn_like", "full_like", "pos", "nan_to_num", "pixel_shuffle_free", "hard_sigmoid", "hard_swish",
        "swish", "requires_grad_",
    ),
    ew.reduction: ("mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "prod", "norm"),
    ew.creation: ("zeros", "ones", "full", "empty", "arange", "rand", "randn", "randint", "linspace",
                  "new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "tensor", "bernoulli_",
                  "bernoulli", "div_by_keep", "eye", "meshgrid"),
    shape.view: ("view", "reshape"),
    shape.same_shape: ("flatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "squeeze_", "unsqueeze_"),
    shape.unflatten: ("unflatten",),
    shape.permute: ("permute",),
    shape.transpose: ("transpose", "swapaxes", "swapdims", "t"),
    shape.expand: ("expand", "expand_as"),
    shape.repeat: ("repeat",),
    shape.repeat_interleave: ("repeat_interleave",),
    shape.spatial_only: ("roll", "flip"),
    segments.cat: ("cat", "concat", "concatenate"),
    segments.stack: ("stack",),
    segments.split: ("split", "split_with_sizes"),
    segments.chunk: ("chunk",),
    segments.unbind: ("unbind",),
    segments.getitem: ("getitem",),
    segments.pad: ("pad",),
    linalg.matmul: ("matmul", "bmm"),
    linalg.einsum: ("einsum",),
    linalg.linear_fn: ("linear",),
    linalg.conv_fn: ("conv1d", "conv2d", "conv3d"),
    linalg.layer_norm_fn: ("layer_norm", "rms_norm"),  # rms_norm: (x, shape, weight, eps)
    linalg.sdpa: ("scaled_dot_product_attention",),
}

FUNCTION_RULES: dict[Any, FunctionRule] = {}  # function object (torch.cat, operator.add…) → rule
METHOD_RULES: dict[str, FunctionRule] = {}  # Tensor method name ("view", "add_"…) → rule


def _build() -> None:
    namespaces = (torch, F, operator, torch.Tensor, torch.special)
    for rule, names in _BY_NAME.items():
        for name in names:
            METHOD_RULES.setdefault(name, rule)
            for ns in namespaces:
                target = getattr(ns, name, None)
                if callable(target):
                    FUNCTION_RULES.setdefault(target, rule)
    METHOD_RULES["__getitem__"] = segments.getitem
    METHOD_RULES["unfold"] = FUNCTION_RULES[torch.Tensor.unfold] = shape.tensor_unfold  # not F.unfold
    FUNCTION_RULES[operator.getitem] = segments.getitem
    for rule, targets in _extra_targets().items():
        for target in targets:
            FUNCTION_RULES[target] = rule


def _extra_targets() -> dict[Callable[..., Any], list[Any]]:
    """Functions that model libraries wrap as fx leaves (``torch.fx.wrap``)."""
    import torchvision.ops
    from torchvision.models import swin_transformer as tv_swin
    from torchvision.models.video import swin_transformer as tv_swin3d
    by_rule: dict[Callable[..., Any], list[Any]] = {
        ew.passthrough: [torchvision.ops.stochastic_depth],
        # video Swin's 3-D twins take the same arguments at the same places (T·H·W windows)
        attention.shifted_window_attention: [tv_swin.shifted_window_attention, tv_swin3d.shifted_window_attention_3d],
        attention.relative_position_bias: [tv_swin._get_relative_position_bias, tv_swin3d._get_relative_position_bias],
        windows.unfold: [F.unfold],  # not Tensor.unfold(dim, size, step): another op
        windows.fold: [F.fold],
    }
    for target, rule in windows.window_functions().items():
        by_rule.setdefault(rule, []).append(target)
    return by_rule


_build()
for _cls in notrace.notrace_classes():  # shape-dependent forward code: traced concretely, on its own
    if find_module_rule_by_mro(_cls) is None:
        MODULE_RULES[_cls] = notrace.trace_through


def find_function_rule(op: str, target: Any) -> FunctionRule | None:
    if op == "call_method":
        return METHOD_RULES.get(target)
    return FUNCTION_RULES.get(target)
