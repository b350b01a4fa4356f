"""Width configurations (issue 14, items 1-2): any uniform width in range or per-group channel
counts are served, exported and saved like switches; switches behave exactly as before; BatchNorm
of a configuration borrows the nearest wider switch's until it is calibrated."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import slimify
from slimify.errors import SlimifyError
from slimify.rewrite.config_names import store_config
from slimify.rewrite.config_slots import channels_of, config_counts, group_grid
from slimify.store.digits_net import DigitsNet
from slimify.store.slimfile import plan_digest
from slimify.train import calibrate_bn, digits
from tests.test_export import _randomize_bn, converted

pytestmark = pytest.mark.usefixtures("one_thread")


def digitsnet() -> nn.Module:
    torch.manual_seed(0)
    model = DigitsNet()
    _randomize_bn(model)
    return slimify.convert(model, (0.25, 0.5, 0.75, 1.0), 4, torch.randn(1, 3, 32, 32)).eval()


X = torch.randn(2, 3, 32, 32)


def _quiet(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return model(x)


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v2", "mixnet_s", "ghostnet_050"])
def test_any_uniform_width_exports_what_it_serves(name: str) -> None:
    model = converted(name)
    x = torch.randn(2, 3, 64, 64)
    switch_out = {w: _quiet(slimify.export(model, w).eval(), x) for w in slimify.switches(model)}
    for w in (0.3, 0.6, 0.85):
        with slimify.width(model, w):
            got = _quiet(model, x)
            assert slimify.get_width(model) == w
        plain = slimify.export(model, w).eval()
        torch.testing.assert_close(_quiet(plain, x), got, rtol=1e-4, atol=1e-4)
        assert not any(type(m).__module__.startswith("slimify") for m in plain.modules())
    for w, want in switch_out.items():  # switches untouched by the configurations served since
        with slimify.width(model, w):
            torch.testing.assert_close(_quiet(model, x), want, rtol=1e-4, atol=1e-4)


def test_switches_state_dict_and_plan_are_unchanged_by_configurations() -> None:
    model, fresh = digitsnet(), digitsnet()
    keys, digest = list(model.state_dict()), plan_digest(model)
    for w in (0.3, 0.6, 0.9):
        with slimify.width(model, w):
            _quiet(model, X)
    store_config(model, "mixed", {0: 8, 2: 24})
    assert list(model.state_dict()) == keys and plan_digest(model) == digest
    for w in slimify.switches(model):
        with slimify.width(model, w), slimify.width(fresh, w):
            assert torch.equal(model(X), fresh(X))
    with slimify.width(model, 1.0):
        assert slimify.get_width(model) == 1.0


def test_a_width_keeping_a_switchs_channels_is_that_switch() -> None:
    model = digitsnet()
    state = slimify.state.get_state(model)
    with slimify.width(model, 0.51):  # rounds to the same counts as 0.5: the switch, its own BN
        assert state.index == 1 and not state.slots


def test_per_group_configuration_serves_exports_and_counts() -> None:
    model = digitsnet()
    config = {0: 8, 1: 4, 2: 32, 3: 8, 4: 20}
    assert channels_of(model, config) == config
    store_config(model, "lean", config)
    assert slimify.configs(model)["lean"] == config and slimify.configs(model)["0.5"] == 0.5
    with slimify.width(model, "lean"):
        got = _quiet(model, X)
    plain = slimify.export(model, "lean").eval()
    torch.testing.assert_close(_quiet(plain, X), got)
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 4, 32, 8, 20]
    partial = channels_of(model, {2: 16})  # groups not named keep their full width
    assert partial == {0: 16, 1: 16, 2: 16, 3: 32, 4: 64}


def test_gradients_reach_the_shared_weights_and_borrowed_statistics_stay() -> None:
    model = digitsnet().train()
    bn = model[1]
    before = bn.slim_bn[2].running_mean.clone()  # switch 0.75: what width 0.6 borrows
    with slimify.width(model, 0.6):
        model(X).sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad[:12].abs().sum() > 0
    assert model[0].weight.grad[12:].abs().sum() == 0
    assert bn.slim_bn[2].weight.grad is not None  # affine borrowed from the nearest wider switch
    assert torch.equal(bn.slim_bn[2].running_mean, before)


def test_uncalibrated_configuration_says_once_what_it_borrows() -> None:
    model = digitsnet()
    with slimify.width(model, 0.6), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(X)
        model(X)
    messages = [str(w.message) for w in caught if "calibrated" in str(w.message)]
    assert len(messages) == 1 and "w=0.75" in messages[0]


def test_calibration_gives_a_configuration_its_own_statistics_and_saves_it(tmp_path) -> None:
    model = digitsnet()
    with slimify.width(model, 0.6):
        borrowed = _quiet(model, X)
    calibrate_bn(model, digits("train"), batches=2, widths=[0.6], batch_size=32)
    assert "0.6" in slimify.configs(model)
    with slimify.width(model, 0.6), warnings.catch_warnings():
        warnings.simplefilter("error")  # calibrated: no fallback warning
        calibrated = model(X)
    assert not torch.allclose(borrowed, calibrated)
    store_config(model, "lean", {0: 8, 2: 16})
    path = slimify.save(model, tmp_path / "m.slim", source="slimify:digitsnet")
    loaded = slimify.load(path)
    assert slimify.configs(loaded) == slimify.configs(model)
    for value in (0.6, "lean", 0.5):
        with slimify.width(model, value), slimify.width(loaded, value):
            assert torch.equal(_quiet(model, X), _quiet(loaded, X))


@pytest.mark.parametrize("value, message", [
    (0.1, r"outside this model's range \[0.25, 1\]"),
    (1.5, "outside"),
    (float("nan"), "outside"),
    ({9: 8}, "group 9, which does not exist"),
    ({"x": 8}, "not a group index"),
    ({0: 6}, "group 0 cannot keep 6 channels: it keeps one of 4, 8, 12, 16"),
    ({5: 4}, "it is fixed"),
    ({0: True}, "cannot keep True"),
    ("nope", "no width configuration named 'nope'"),
    ([0.5], "a width must be"),
])
def test_bad_configurations_are_one_clear_error(value, message: str) -> None:
    model = digitsnet()
    with pytest.raises(SlimifyError, match=message):
        with slimify.width(model, value):
            pass
    assert slimify.state.get_state(model).index == 3  # still full width
    with pytest.raises(SlimifyError):
        slimify.export(model, value)


@pytest.mark.parametrize("name", ["", "0.5", "has space", "-lead"])
def test_bad_configuration_names(name: str) -> None:
    with pytest.raises(SlimifyError):
        store_config(digitsnet(), name, 0.6)


def test_grid_follows_units_and_divisor() -> None:
    group = type("G", (), {"fixed": False, "unit": 3, "size": 30})()
    assert group_grid(group, 2) == [6, 12, 18, 24, 30]
    model = digitsnet()
    assert config_counts(model, 1.0)[0] == config_counts(model, "1")[0]


def test_feature_model_pads_at_a_configuration() -> None:
    from timm import create_model

    torch.manual_seed(0)
    model = create_model("resnet10t", num_classes=0).eval()
    slimify.convert(model, example_input=torch.randn(1, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    with slimify.width(model, 0.6):
        out = _quiet(model, x)
    assert out.shape == _quiet(model, x).shape
    torch.testing.assert_close(_quiet(slimify.export(model, 0.6).eval(), x), out, rtol=1e-4, atol=1e-4)


def _cli(args: list, capsys) -> tuple[int, str, str]:
    from slimify.cli.app import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_calibrate_command_stores_a_width_with_the_model(tmp_path, capsys) -> None:
    src = slimify.save(digitsnet(), tmp_path / "m.slim", source="slimify:digitsnet")
    code, text, _ = _cli(["calibrate", src, "--data", "digits", "--width", "0.6", "--batches", "2",
                          "--batch-size", "32", "-o", tmp_path / "c.slim"], capsys)
    assert code == 0 and "for width 0.6" in text
    loaded = slimify.load(tmp_path / "c.slim")
    assert slimify.configs(loaded)["0.6"] == 0.6
    assert len(loaded.state_dict()) > len(slimify.load(src).state_dict())  # its own statistics
    with slimify.width(loaded, 0.6), warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded(X)


@pytest.mark.parametrize("args, message", [
    (["--width", "0.6", "-o", "{tmp}/c.pt"], "stored in .slim files"),
    (["--config", "nope", "-o", "{tmp}/c.slim"], "no width configuration named 'nope'"),
    (["--width", "0.1", "-o", "{tmp}/c.slim"], "outside this model's range"),
    (["--width", "0.6", "--config", "x", "-o", "{tmp}/c.slim"], "not both"),
])
def test_calibrate_command_bad_configurations(tmp_path, capsys, args: list, message: str) -> None:
    src = slimify.save(digitsnet(), tmp_path / "m.slim", source="slimify:digitsnet")
    code, _, err = _cli(["calibrate", src, "--data", "digits", "--batches", "1",
                         *[a.replace("{tmp}", str(tmp_path)) for a in args]], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.slim"]


def test_inspect_lists_named_configurations(tmp_path, capsys) -> None:
    model = digitsnet()
    store_config(model, "lean", {0: 8})
    src = slimify.save(model, tmp_path / "m.slim", source="slimify:digitsnet")
    code, text, _ = _cli(["inspect", src], capsys)
    assert code == 0 and "lean: {0: 8, 1: 16, 2: 32, 3: 32, 4: 64}" in text


def test_inference_copies_are_kept_for_switches_and_the_latest_configuration_only() -> None:
    model = digitsnet()
    data = slimify.rewrite.serve.slim_data(model[0])
    for w in (0.25, 0.5, 0.3, 0.6, 0.9):
        with slimify.width(model, w):
            _quiet(model, X)
    slots = sorted(s for name, s in slimify.rewrite.serve.inference_copies(data) if name == "weight")
    assert slots[:2] == [0, 1] and len(slots) == 3 and slots[-1] >= 4
