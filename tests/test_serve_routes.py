"""Serving narrow tensors from routes resolved once per width (issue 25, item 2): the
served tensors stay in sync with the stored ones after optimizer steps, ``load_state_dict``,
``.to()`` and train-mode BatchNorm updates; gradients reach the shared full weights; width
contexts nest; the state dict keeps the original keys."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import slimify
import slimify.rewrite.serve as serve
from slimify.store.digits_net import DigitsNet
from tests.test_export import _randomize_bn

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(2, 3, 32, 32)
SWITCHES = (0.25, 0.5, 0.75, 1.0)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = DigitsNet()
    _randomize_bn(model)
    return slimify.convert(model, SWITCHES, 4, torch.randn(1, 3, 32, 32)).eval()


def _same_as_export(model: nn.Module, w: float) -> None:
    plain = slimify.export(model, w).eval()
    with torch.inference_mode(), slimify.width(model, w):
        got = model(X)
    with torch.no_grad(), slimify.width(model, w):
        got_no_grad = model(X)
    want = plain(X)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(got_no_grad, want, rtol=0, atol=1e-6)


def _train_step(model: nn.Module, lr: float = 0.5) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for w in SWITCHES:
        with slimify.width(model, w):
            model(X).square().mean().backward()
    optimizer.step()
    model.eval()


def test_routes_are_resolved_once_per_width(monkeypatch) -> None:
    model = _model()
    calls: list[str] = []
    original = serve._route
    monkeypatch.setattr(serve, "_route", lambda m, d, name, s: calls.append(name) or original(m, d, name, s))
    with torch.inference_mode(), slimify.width(model, 0.5):
        model(X)
        first = len(calls)
        model(X)
        model(X)
    assert first > 0 and len(calls) == first  # the second and third forward resolved nothing
    with torch.inference_mode(), slimify.width(model, 0.25):
        model(X)
    assert len(calls) == 2 * first  # a new width: every route once more
    for w in (0.5, 0.25, 0.5):  # widths seen before: nothing to resolve
        with torch.inference_mode(), slimify.width(model, w):
            model(X)
    assert len(calls) == 2 * first


def test_served_tensors_follow_optimizer_steps_at_every_switch() -> None:
    model = _model()
    for w in SWITCHES:  # fill the inference copies and routes first
        _same_as_export(model, w)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_step(model)
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("slim_bn.0.weight"))
    assert not torch.equal(before["0.weight"], after["0.weight"])
    for w in SWITCHES:
        _same_as_export(model, w)


def test_gradients_reach_only_the_active_part_of_the_shared_weight() -> None:
    model = _model().train()
    with slimify.width(model, 0.5):
        model(X).sum().backward()
    conv = model[0]
    kept = slimify.export(model, 0.5)[0].out_channels
    grad = conv.weight.grad
    assert grad is not None and grad[:kept].abs().sum() > 0 and grad[kept:].abs().sum() == 0


def test_train_mode_batchnorm_statistics_reach_the_stored_tensors() -> None:
    model = _model().train()
    private = model[1].slim_bn[1].running_mean.clone()
    full = model[1].running_mean.clone()
    with torch.inference_mode(), slimify.width(model, 0.5):
        model(X)  # routes resolved in inference mode first
    with torch.no_grad(), slimify.width(model, 0.5):
        model(X)
    assert not torch.equal(model[1].slim_bn[1].running_mean, private)
    assert torch.equal(model[1].running_mean, full)
    with slimify.width(model, 1.0):
        model(X).sum().backward()
    assert not torch.equal(model[1].running_mean, full)


def test_served_tensors_follow_load_state_dict_in_place_and_assigned() -> None:
    model, other = _model(), _model()
    _train_step(other)
    for w in SWITCHES:
        _same_as_export(model, w)
    model.load_state_dict(other.state_dict())
    for w in SWITCHES:
        _same_as_export(model, w)
        with torch.inference_mode(), slimify.width(model, w), slimify.width(other, w):
            torch.testing.assert_close(model(X), other(X), rtol=0, atol=0)
    fresh = {k: v.clone() + 0.01 if v.is_floating_point() else v.clone() for k, v in other.state_dict().items()}
    model.load_state_dict(fresh, assign=True)
    assert model[0].weight.data_ptr() == fresh["0.weight"].data_ptr()
    for w in SWITCHES:
        _same_as_export(model, w)


def test_served_tensors_follow_to_and_double() -> None:
    model = _model()
    for w in SWITCHES:
        _same_as_export(model, w)
    reference = copy.deepcopy(model).double()
    model.to(torch.float64)
    x = X.double()
    for w in SWITCHES:
        with torch.inference_mode(), slimify.width(model, w):
            got = model(x)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, slimify.export(reference, w).eval()(x), rtol=0, atol=1e-12)


def test_width_contexts_nest() -> None:
    model = _model()
    plain = {w: slimify.export(model, w).eval() for w in (0.25, 0.5)}
    with torch.inference_mode(), slimify.width(model, 0.5):
        outer = model(X)
        with slimify.width(model, 0.25):
            inner = model(X)
        again = model(X)
    torch.testing.assert_close(outer, plain[0.5](X), rtol=0, atol=1e-6)
    torch.testing.assert_close(inner, plain[0.25](X), rtol=0, atol=1e-6)
    torch.testing.assert_close(again, outer, rtol=0, atol=0)


def test_state_dict_keeps_the_original_keys() -> None:
    torch.manual_seed(0)
    original = DigitsNet()
    model = _model()
    with torch.inference_mode(), slimify.width(model, 0.5):
        model(X)
    keys = [k for k in model.state_dict() if ".slim_bn." not in k]
    assert keys == list(original.state_dict())
    assert all(model.state_dict()[k].shape == v.shape for k, v in original.state_dict().items())


@pytest.mark.parametrize("index", [[0, 1, 2], [0, 2, 5], [1, 2, 3], [3, 0, 1]])
def test_private_batchnorm_holds_copies_of_the_chosen_channels(index) -> None:
    import numpy as np

    from slimify.rewrite.batchnorm import SwitchBatchNorm
    bn = nn.BatchNorm2d(6)
    _randomize_bn(bn)
    nn.init.uniform_(bn.weight)
    holder = SwitchBatchNorm(bn, np.array(index))
    for name in ("weight", "bias", "running_mean", "running_var"):
        got, full = getattr(holder, name), getattr(bn, name)
        assert torch.equal(got, full.detach()[index]) and got.data_ptr() != full.data_ptr()
        got.data.add_(1)  # its own storage: the original's values stay
        assert not torch.equal(got, full.detach()[index])


def test_inference_copy_is_reused_until_the_full_weight_changes_in_place() -> None:
    model = _model()
    data = serve.slim_data(model[0])
    with torch.inference_mode(), slimify.width(model, 0.5):
        model(X)
        first = serve.inference_copies(data)[("weight", 1)]
        model(X)
        assert serve.inference_copies(data)[("weight", 1)] is first  # kept: no copy per read
    with torch.no_grad():
        model[0].weight.add_(0.25)  # an optimizer step's kind of update: same tensor, new version
    _same_as_export(model, 0.5)
    again = serve.inference_copies(data)[("weight", 1)]
    assert again is not first and torch.equal(again, model[0].weight.detach()[: again.shape[0], : again.shape[1]])
