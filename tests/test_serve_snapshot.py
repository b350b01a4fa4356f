"""The getter's snapshot (issue 25, item 2): each read at a slot returns what the previous read
there resolved after one stamp check. Every case that changes what a read must return is
exercised after the snapshot was filled, so each test fails if the snapshot served a stale
tensor: another width or configuration, in-place updates, ``.to()`` and other ``_apply``,
``load_state_dict`` (in place and ``assign=True``), parameters replaced, autograd, deepcopy and
pickle."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn as nn

import slimify
import slimify.rewrite.serve as serve
from tests.test_serve_routes import SWITCHES, X, _model, _same_as_export, _train_step

pytestmark = pytest.mark.usefixtures("one_thread")


# the snapshot keeps the latest slot's reads: every check reads the width filled last first
FILLED = 0.5
CHECK = (FILLED, *SWITCHES)


def _fill(model: nn.Module, widths: tuple = (*SWITCHES, FILLED)) -> None:
    """Run every width in inference, ``FILLED`` last: the routes and inference copies of every
    switch are kept and each served module's snapshot holds ``FILLED``'s tensors."""
    for w in widths:
        with torch.inference_mode(), slimify.width(model, w):
            model(X)


def _served(model: nn.Module, w) -> torch.Tensor:
    with torch.inference_mode(), slimify.width(model, w):
        return model(X)


def _cut_conv(model: nn.Module) -> nn.Module:
    """A module whose weight is cut on both dimensions at narrow widths (an inference copy)."""
    return model[3]


def test_snapshot_is_filled_and_used() -> None:
    model = _model()
    _fill(model, (0.5,))
    seen = serve.slim_data(_cut_conv(model)).snapshot["weight"]
    with torch.inference_mode(), slimify.width(model, 0.5):
        assert _cut_conv(model).weight is seen[5]  # the snapshot's copy, no new one


def test_every_switch_and_configuration_after_another() -> None:
    model = _model()
    widths = (*SWITCHES, 0.4, 0.9)
    want = {w: slimify.export(model, w).eval()(X) for w in widths}
    for w in (*widths, *reversed(widths), 0.25, 0.4, 1.0, 0.9, 0.5):  # each read follows another width's
        torch.testing.assert_close(_served(model, w), want[w], rtol=0, atol=1e-6)


def test_in_place_update_of_the_full_weight() -> None:
    model = _model()
    _fill(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    for w in CHECK:
        _same_as_export(model, w)


def test_optimizer_step() -> None:
    model = _model()
    _fill(model)
    _train_step(model)
    for w in CHECK:
        _same_as_export(model, w)


def test_apply_that_swaps_data_without_a_new_version() -> None:
    model = _model()
    _fill(model)
    versions = {n: p._version for n, p in model.named_parameters()}
    model._apply(lambda t: t * 2 if t.is_floating_point() else t)  # what .to()/.half() do: new .data, same version
    assert {n: p._version for n, p in model.named_parameters()} == versions
    for w in CHECK:
        _same_as_export(model, w)


def test_to_double_and_back() -> None:
    model = _model()
    _fill(model)
    model.double()
    with torch.inference_mode(), slimify.width(model, FILLED):
        assert model(X.double()).dtype == torch.float64
    model.float()
    for w in CHECK:
        _same_as_export(model, w)


def test_load_state_dict_in_place_and_assigned() -> None:
    model, other = _model(), _model()
    _train_step(other)
    _fill(model)
    model.load_state_dict(other.state_dict())
    for w in CHECK:
        torch.testing.assert_close(_served(model, w), _served(other, w), rtol=0, atol=0)
    _fill(model)
    fresh = {k: v.clone() * 1.1 if v.is_floating_point() else v.clone() for k, v in other.state_dict().items()}
    model.load_state_dict(fresh, assign=True)
    for w in CHECK:
        _same_as_export(model, w)


def test_parameter_replaced_in_the_modules_dict() -> None:
    model = _model()
    _fill(model)
    conv = _cut_conv(model)
    with torch.no_grad(), slimify.width(model, FILLED):
        conv._parameters["weight"] = nn.Parameter(conv._parameters["weight"].detach() * -1)
    for w in CHECK:
        _same_as_export(model, w)


def test_autograd_reaches_the_full_weight_after_inference_reads() -> None:
    model = _model()
    _fill(model)
    model.train()
    with slimify.width(model, FILLED):
        model(X).sum().backward()
    grad = _cut_conv(model)._parameters["weight"].grad
    assert grad is not None and grad.abs().sum() > 0


def test_a_deepcopy_follows_its_own_weights() -> None:
    model = _model()
    _fill(model)
    twin = copy.deepcopy(model)
    assert not serve.slim_data(_cut_conv(twin)).snapshot
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(0.1)
    for w in CHECK:
        _same_as_export(twin, w)
    torch.testing.assert_close(_served(model, 0.5), slimify.export(model, 0.5).eval()(X), rtol=0, atol=1e-6)


def test_a_pickled_snapshot_is_empty() -> None:
    """A whole converted model does not pickle (its generated classes are not importable); its
    parts may (torch.save of SlimData, multiprocessing): an unpickled snapshot starts empty."""
    model = _model()
    _fill(model)
    snapshot = serve.slim_data(_cut_conv(model)).snapshot
    assert snapshot
    again = pickle.loads(pickle.dumps(snapshot))
    assert isinstance(again, serve.Snapshot) and not again


def test_parameter_assigned_as_an_attribute() -> None:
    model = _model()
    _fill(model)
    conv = _cut_conv(model)
    with torch.no_grad(), slimify.width(model, FILLED):  # assigning reads first (hasattr): at the filled slot
        conv.weight = nn.Parameter(conv._parameters["weight"].detach() + 0.5)
    for w in CHECK:
        _same_as_export(model, w)


def test_data_assigned_outside_apply() -> None:
    """``param.data = t`` (``torch.nn.utils.vector_to_parameters`` does it) bumps no version the
    snapshot's alias shares and bypasses ``_apply``: the full tensor's data pointer tells."""
    model = _model()
    _fill(model)
    with torch.no_grad():
        params = list(model.parameters())
        vector = torch.nn.utils.parameters_to_vector(params) * 0.5
        torch.nn.utils.vector_to_parameters(vector, params)
    for w in CHECK:
        _same_as_export(model, w)
