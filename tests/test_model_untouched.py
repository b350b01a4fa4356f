"""Analysis never changes what the model owns: every attribute of every module (recursively through
dicts, lists, tuples and dataclasses, frozen mappings included) is the same after a convert that
fails and after an analysis that succeeds; a model whose config is a frozen mapping (diffusers'
``FrozenDict``) converts and keeps its config."""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

import pytest
import torch
import torch.nn as nn

import slimify
from slimify.analysis.containers import copy_container, refill
from slimify.analysis.shape_pass import state_kept
from slimify.analysis.stages import analyze_model
from slimify.check.selfcheck import self_check


class FrozenConfig(OrderedDict):
    """Like diffusers' ``FrozenDict``: items are also attributes; ``clear`` works, every other change raises."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            setattr(self, key, value)
        self._frozen = True

    def __setitem__(self, key: Any, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise TypeError("You cannot use item assignment on a FrozenConfig")
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("You cannot use update on a FrozenConfig")

    def pop(self, *args: Any) -> Any:
        raise TypeError("You cannot use pop on a FrozenConfig")

    def setdefault(self, *args: Any) -> Any:
        raise TypeError("You cannot use setdefault on a FrozenConfig")


@dataclasses.dataclass
class Options:
    scale: float
    names: list[str]


class Configured(nn.Module):
    """Reads its frozen config in forward and stores what it computes (a cache, a list, an attribute)."""

    def __init__(self, branch_on_values: bool = False) -> None:
        super().__init__()
        self._internal_dict = FrozenConfig(width=16, center=True, blocks=[1, 2])
        self.options = Options(scale=0.5, names=["a", "b"])
        self.cache: dict[str, Any] = {"kept": 1}
        self.seen: list[Any] = []
        self.branch_on_values = branch_on_values
        self.conv1 = nn.Conv2d(3, self.config.width, 3, padding=1)
        self.bn = nn.BatchNorm2d(self.config.width)
        self.conv2 = nn.Conv2d(self.config.width, 8, 1)

    @property
    def config(self) -> FrozenConfig:
        return self._internal_dict

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        if self.config.center:
            x = x * self.options.scale * scale
        y = torch.relu(self.bn(self.conv1(x)))
        self.cache["last"] = y  # forward code storing state
        self.seen.append(y.shape[1])
        self.last = y
        if self.branch_on_values and y.sum() > 0:  # refused: a branch on values
            y = y * 2
        return self.conv2(y)


def snapshot(value: Any, depth: int = 0) -> Any:
    """Everything reachable from ``value`` by containers and dataclasses, modules and other objects by
    identity, tensors by identity and contents."""
    if depth > 8:
        return ("deep", id(value))
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value), value.detach().clone())
    if isinstance(value, nn.Module):
        return ("module", id(value))
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    own = sorted((k, snapshot(v, depth + 1)) for k, v in vars(value).items()) if hasattr(value, "__dict__") else []
    if isinstance(value, dict):
        items = [(k, snapshot(v, depth + 1)) for k, v in value.items()]
        return (type(value), id(value), items, own)
    if isinstance(value, (list, tuple, set)):
        return (type(value), id(value), [snapshot(v, depth + 1) for v in value], own)
    if dataclasses.is_dataclass(value):
        return (type(value), id(value), own)
    return (type(value), id(value))


def model_snapshot(model: nn.Module) -> list[Any]:
    return [(name, type(m), snapshot(vars(m))) for name, m in model.named_modules()]


def assert_same(a: Any, b: Any) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), (a, b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def example() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8)


def test_failing_convert_leaves_every_attribute_as_it_was() -> None:
    model = Configured(branch_on_values=True).eval()
    before = model_snapshot(model)
    with pytest.raises(slimify.SlimifyError, match="values"):
        slimify.convert(model, example_input=example())
    assert_same(model_snapshot(model), before)
    assert dict(model.config) == {"width": 16, "center": True, "blocks": [1, 2]} and model.config.width == 16


def test_succeeding_analysis_leaves_every_attribute_as_it_was() -> None:
    model = Configured().eval()
    before = model_snapshot(model)
    for kwargs in (None, {"scale": 2.0}):  # symbolic, then the concrete trace (a keyword input)
        analyze_model(model, (0.5, 1.0), None, example(), kwargs, check=self_check)
        assert_same(model_snapshot(model), before)


def test_model_with_a_frozen_config_converts() -> None:
    model = Configured().eval()
    config, x = model.config, example()
    expected = model(x)
    model.seen.clear()
    slimify.convert(model, example_input=x, example_kwargs={"scale": 1.0})
    assert model.config is config and dict(config) == {"width": 16, "center": True, "blocks": [1, 2]}
    assert report_slims(model)
    with slimify.width(model, 1.0):
        assert torch.allclose(model(x), expected)
    with slimify.width(model, 0.5):
        assert model(x).shape == expected.shape


def report_slims(model: nn.Module) -> bool:
    return any(g.channels[0] < g.size for g in slimify.report(model).groups)


def test_state_is_put_back_without_the_containers_own_mutators() -> None:
    model = Configured().eval()
    frozen = model.config
    with state_kept(model, lambda value: True):
        dict.__setitem__(frozen, "extra", 1)  # forward code bypassing the mapping's refusal
        model.seen.append(3)
        del model.cache["kept"]
    assert list(frozen.items()) == [("width", 16), ("center", True), ("blocks", [1, 2])]
    assert model.seen == [] and model.cache == {"kept": 1}


def test_container_copy_keeps_type_items_and_attributes() -> None:
    frozen = FrozenConfig(a=1, b=2)
    copied = copy_container(frozen)
    assert type(copied) is FrozenConfig and copied is not frozen
    assert list(copied.items()) == [("a", 1), ("b", 2)] and copied.a == 1 and copied._frozen
    refill(copied, ["b", 3])
    assert list(copied.items()) == [("b", 3)] and list(frozen.items()) == [("a", 1), ("b", 2)]


class ReplacesItsLayer(nn.Module):
    """Assigns a new layer to itself on every call: no plan holds for the next call."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.conv = nn.Conv2d(3, 8, 3)
        return self.head(self.conv(x))


def test_model_replacing_its_layers_is_refused_and_left_as_it_was() -> None:
    model = ReplacesItsLayer().eval()
    before = model_snapshot(model)
    with pytest.raises(slimify.SlimifyError, match=r"replaces its own layer 'conv' when it runs .*test_model_untouched"):
        slimify.convert(model, example_input=example())
    assert_same(model_snapshot(model), before)
