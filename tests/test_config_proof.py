"""Named configurations are proven before they are stored (issue 14): each one runs once on the
example input (the original output's structure and shapes) and its export computes what the
slimmable model computes at it; otherwise one SlimifyError and nothing is stored."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimify
from slimify.errors import SlimifyError
from slimify.rewrite.config_slots import config_slot
from slimify.rewrite.output_pad import find_output_pad
from slimify.rewrite.serve import slim_data
from slimify.selection import config_proof
from slimify.selection.config_search import parse_budget, search
from slimify.state import get_state
from slimify.store.digits_net import DigitsNet
from slimify.train import digits
from slimify.train.loader import as_batches

pytestmark = pytest.mark.usefixtures("one_thread")

LEAN = {0: 8, 1: 12, 2: 16, 3: 32, 4: 16}


def digitsnet() -> nn.Module:
    torch.manual_seed(0)
    return slimify.convert(DigitsNet(), (0.25, 0.5, 0.75, 1.0), 4, torch.randn(1, 3, 32, 32)).eval()


def features() -> nn.Module:
    """A feature model (no classifier): its narrow widths pad the output back to full size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3),
                          nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return slimify.convert(model, (0.25, 0.5, 1.0), 4, torch.randn(1, 3, 16, 16)).eval()


def _slot(model: nn.Module, value: object) -> int:
    return config_slot(model, value)


def test_a_proven_configuration_is_stored_and_its_warning_still_comes_once() -> None:
    model = digitsnet()
    calls = []
    real_export = config_proof.export
    config_proof.export = lambda m, v: calls.append(v) or real_export(m, v)  # type: ignore[assignment]
    try:
        assert slimify.add_config(model, "lean", LEAN) == "lean"
    finally:
        config_proof.export = real_export  # type: ignore[assignment]
    assert calls == [LEAN] and slimify.configs(model)["lean"] == LEAN
    with pytest.warns(UserWarning, match="no calibrated BatchNorm statistics"), torch.no_grad(), \
            slimify.width(model, "lean"):
        model(torch.randn(1, 3, 32, 32))


def test_a_configuration_that_crashes_is_refused_and_not_stored() -> None:
    model = digitsnet()
    slot = _slot(model, LEAN)
    d = slim_data(model.get_submodule("3"))
    cut = dict(d.params["weight"][slot])
    cut[0] = np.arange(11)  # one output channel short of what its BatchNorm expects
    d.params["weight"][slot] = cut
    with pytest.raises(SlimifyError, match=r"does not run on the example input"):
        slimify.add_config(model, "lean", LEAN)
    assert "lean" not in slimify.configs(model)


def test_a_configuration_changing_the_output_shape_is_refused() -> None:
    model = features()
    slot = _slot(model, {0: 8, 1: 12})
    find_output_pad(model).widths[slot] = (8,)  # pads 12 channels as if they were 8: the output grows
    with pytest.raises(SlimifyError, match=r"changes the model's output: \[1, 36\] where full width gives \[1, 32\]"):
        slimify.add_config(model, "lean", {0: 8, 1: 12})
    assert "lean" not in slimify.configs(model)


def test_an_export_that_differs_is_refused(monkeypatch) -> None:
    def wrong_export(model: nn.Module, value: object) -> nn.Module:
        plain = slimify.export(model, value)
        with torch.no_grad():
            plain[-1].bias.add_(1.0)
        return plain

    monkeypatch.setattr(config_proof, "export", wrong_export)
    model = digitsnet()
    with pytest.raises(SlimifyError, match="the exported model differs from the slimmable model"):
        slimify.add_config(model, "lean", LEAN)
    assert "lean" not in slimify.configs(model)


def test_a_bad_name_is_refused_before_anything_runs(monkeypatch) -> None:
    monkeypatch.setattr(config_proof, "prove_config", lambda *a: pytest.fail("proved before the name was checked"))
    with pytest.raises(SlimifyError, match="is a switch of this model"):
        slimify.add_config(digitsnet(), "0.5", LEAN)


def test_a_feature_model_configuration_is_proven_padded() -> None:
    model = features()
    slimify.add_config(model, "lean", {0: 8, 1: 12})
    with torch.no_grad(), slimify.width(model, "lean"):
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 32)


def test_search_stores_nothing_when_its_result_fails_the_proof(monkeypatch) -> None:
    model = digitsnet()
    held = list(itertools.islice(as_batches(digits("val"), 32), 1))

    def crashing_export(model: nn.Module, value: object) -> nn.Module:
        raise RuntimeError("boom")

    monkeypatch.setattr(config_proof, "export", crashing_export)
    with pytest.raises(SlimifyError, match="does not export: RuntimeError: boom"):
        search(model, held, parse_budget("flops", "0.5x"), steps=3)
    assert list(slimify.configs(model)) == ["0.25", "0.5", "0.75", "1"]
    assert get_state(model).index == 3  # full width again


def test_calibrating_a_width_proves_it_before_naming_it() -> None:
    from slimify.train import calibrate_bn

    model = digitsnet()
    slot = _slot(model, 0.6)
    d = slim_data(model.get_submodule("3"))
    d.params["weight"][slot] = {**d.params["weight"][slot], 0: np.arange(5)}
    batches = list(itertools.islice(as_batches(digits("train"), 32), 1))
    with pytest.raises(SlimifyError, match="configuration 0.6 does not run"):
        calibrate_bn(model, batches, batches=1, widths=[0.6])
    assert "0.6" not in slimify.configs(model)
    calibrate_bn(digitsnet(), batches, batches=1, widths=[0.6, 0.5])  # an intact one calibrates
