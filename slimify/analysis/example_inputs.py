"""Example inputs, in one place: what a model is called with while it is converted, checked,
exported and measured. One notion, :class:`ExampleCall` (``model(*args, **kwargs)`` as a value),
and the few functions that make one:

* :func:`default_input`: convert's input when the caller gives none: a random batch of one at the
  model's own size (``preprocess.own_input_size``), drawn from torch's global generator, as convert
  always drew it;
* :class:`ExampleCall`: the call itself. The trace, the concrete tracer and the self-check take it
  (``ExampleCall.of(example_input, example_kwargs)``: a tuple is several positional inputs, anything
  else one; ``flat``: the inputs holding tensors, the traced graph's inputs); export, profile and
  the proofs batch, resize and move it;
* :func:`describe_call` / :func:`rebuild`: a call's form as JSON (shapes, dtypes, lists, keyword names,
  plain values) so a ``.slim`` file records it and ``load`` converts on an input of the same form:
  several inputs (a Siamese pair, RAFT's two frames), a list of images, keyword inputs (a timestep);
* ``store/slimfile.py``'s ``example_shape``, ``example_input`` and ``example_call``: a converted
  model's recorded call rebuilt (a fixed seed, so every export and profile sees the same values);
  a plain model's falls back to its own size. They live there because they read the conversion
  record a ``.slim`` file carries.

``default_input`` and ``example_input`` differ on purpose: convert's default has always drawn from
the global generator (a seeded one would change the values, and what the caller's later draws see),
while a converted model's example must be the same on every call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from slimify.errors import SlimifyError
from slimify.preprocess import own_input_size

__all__ = ["describe_call", "rebuild", "first_shape", "ExampleCall", "default_input"]

_PLAIN = (type(None), bool, int, float, str)


def default_input(model: Any) -> torch.Tensor:
    """A random batch of one at the model's own input size (:func:`own_input_size`)."""
    return torch.randn(1, *own_input_size(model))


def describe_call(args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> dict[str, Any]:
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
    """Random inputs of the recorded form (``describe_call``'s inverse, values aside)."""
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


@dataclass(frozen=True)
class ExampleCall:
    """``model(*args, **kwargs)`` as a value. Its batch is the first dim of its first tensor; every
    tensor with that first dim is batched (an image and its per-image metadata), others (a scalar,
    a table) are passed as they are at any batch size.

        >>> call = ExampleCall.of((img, meta))       # a tensor, a tuple of inputs or a call
        >>> y = call.run(model); call.batched(8).to("cuda")
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def of(example: Any, kwargs: dict[str, Any] | None = None) -> ExampleCall:
        """A call from one input, a tuple of positional inputs, or a call (kept)."""
        if isinstance(example, ExampleCall):
            return example if not kwargs else ExampleCall(example.args, {**example.kwargs, **kwargs})
        args = tuple(example) if isinstance(example, tuple) else (example,)
        return ExampleCall(args, dict(kwargs or {}))

    @property
    def single(self) -> bool:
        """One tensor, no keywords: the form of an image model."""
        return len(self.args) == 1 and isinstance(self.args[0], torch.Tensor) and not self.kwargs

    @property
    def flat(self) -> tuple[Any, ...]:
        """The inputs holding a tensor (positional, then keyword), in order: a concrete trace's
        graph inputs. The others are constants of the trace."""
        return tuple(v for v in (*self.args, *self.kwargs.values()) if _holds_tensor(v))

    def tensors(self) -> list[torch.Tensor]:
        """The tensors of the call in order (positional, then keyword; lists and dicts flattened)."""
        return [t for t in pytree.tree_leaves((self.args, self.kwargs)) if isinstance(t, torch.Tensor)]

    @property
    def first(self) -> torch.Tensor:
        tensors = self.tensors()
        if not tensors:
            raise SlimifyError("the example call has no tensor input")
        return tensors[0]

    @property
    def batch(self) -> int | None:
        return self.first.shape[0] if self.first.dim() else None

    def is_batched(self, t: torch.Tensor) -> bool:
        return t.dim() > 0 and t.shape[0] == self.batch

    def map(self, fn: Any) -> ExampleCall:
        """The call with ``fn`` applied to every tensor."""
        args, kwargs = pytree.tree_map(lambda v: fn(v) if isinstance(v, torch.Tensor) else v, (self.args, self.kwargs))
        return ExampleCall(tuple(args), dict(kwargs))

    def batched(self, batch: int) -> ExampleCall:
        """The call with ``batch`` rows in every batched tensor (repeating its first row)."""
        return self.map(lambda t: t[:1].expand(batch, *t.shape[1:]).contiguous()
                        if self.is_batched(t) and t.shape[0] != batch else t)

    def resized(self, shape: tuple[int, ...] | list[int]) -> ExampleCall:
        """The call with its first tensor at ``shape`` (random values of the same dtype; same seed)."""
        first = self.first
        if tuple(first.shape) == tuple(shape):
            return self
        new = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0)).to(first.dtype)
        return self.map(lambda t: new.to(t.device) if t is first else t)

    def to(self, device: Any) -> ExampleCall:
        return self.map(lambda t: t.to(device))

    @property
    def device(self) -> torch.device:
        return self.first.device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def run(self, model: Any) -> Any:
        return model(*self.args, **self.kwargs)

    def shapes(self) -> str:
        """``[1, 3, 32, 32]`` for one tensor, ``[1, 3, 32, 32], [1, 4], scale=[1]`` for several."""
        if self.single:
            return str(list(self.first.shape))
        parts = [_shape_text(a) for a in self.args] + [f"{k}={_shape_text(v)}" for k, v in self.kwargs.items()]
        return ", ".join(parts)


def _holds_tensor(value: Any) -> bool:
    return any(isinstance(v, torch.Tensor) for v in pytree.tree_leaves(value))


def _shape_text(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(list(value.shape))
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_shape_text(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shape_text(v)}" for k, v in value.items()) + "}"
    return repr(value)
