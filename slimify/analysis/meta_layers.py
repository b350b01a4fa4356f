"""Shape-only forwards for torch's and timm's own layers on the meta device.

The self-check runs each switch's forward three times per conversion; torch's and timm's own
layers spend most of that in Python around the op (``_conv_forward``, timm's BatchNormAct2d with
its asserts, its act and drop). For exact classes, :func:`shape_forward` gives a forward that makes
the same size checks and returns the empty output directly (and the shape pass calls
:func:`shape_call` for its leaf modules).
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from slimify.analysis.meta_layout import empty, is_meta_float
from slimify.analysis.metarun import batch_norm, conv, linear

__all__ = ["shape_call", "shape_forward"]


def _conv_module(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    if m.padding_mode != "zeros":
        return None
    return conv((x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups), {})


def _linear_module(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    return linear((x, m.weight, m.bias), {})


def _batch_norm_module(dims: tuple[int, ...]) -> Callable[[Any, torch.Tensor], torch.Tensor | None]:
    def forward(m: Any, x: torch.Tensor) -> torch.Tensor | None:
        if x.ndim not in dims:
            raise ValueError(f"expected {' or '.join(f'{d}D' for d in dims)} input (got {x.ndim}D input)")
        return batch_norm((x, m.running_mean, m.running_var, m.weight, m.bias), {})
    return forward


def _batch_norm_act(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    """timm's BatchNormAct2d: batch norm, then its drop and act, when both keep the shape."""
    if type(m.act) not in _SHAPE_KEEPING or type(m.drop) not in _SHAPE_KEEPING:
        return None
    if x.ndim != 4:
        raise AssertionError(f"expected 4D input (got {x.ndim}D input)")
    return batch_norm((x, m.running_mean, m.running_var, m.weight, m.bias), {})


def _activation(m: Any, x: torch.Tensor) -> torch.Tensor | None:
    """A new tensor laid out like ``x``, or ``x`` itself in place."""
    if not is_meta_float(x):
        return None
    return x if getattr(m, "inplace", False) else empty(x.shape, x)


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
