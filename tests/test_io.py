"""Model sources and .slim files (issue 7): only allowed sources build, checkpoints load or are
refused by key, save → load reproduces every switch, and damaged or hostile files are refused
with a SlimifyError, never unpickled."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import slimify
from slimify.errors import SlimifyError
from slimify.store.slimfile import read_config
from slimify.store.sources import ModelSource, TinyNet, create, source_of
from tests.slimfiles import rewrite_slim

pytestmark = pytest.mark.usefixtures("one_thread")

X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _randomize(model: nn.Module) -> nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.2)
    return model


def _tiny(switches: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)) -> nn.Module:
    model = slimify.convert(create("slimify:tinynet", num_classes=7), switches, example_input=X32[:1])
    slimify.state.get_state(model).record.example_shape = [1, 3, 32, 32]
    return _randomize(model).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("slim") / "tiny.slim"
    slimify.save(_tiny(), path)
    return path


def _outputs(model: nn.Module) -> dict[float, torch.Tensor]:
    out = {}
    for w in slimify.switches(model):
        with torch.no_grad(), slimify.width(model, w):
            out[w] = model(X32)
    return out


# -- model sources ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, cls", [("resnet10t", "ResNet"), ("timm:resnet10t", "ResNet"),
                                       ("torchvision:resnet18", "ResNet"), ("slimify:tinynet", "TinyNet"),
                                       ("torchvision.models:squeezenet1_0", "SqueezeNet"),
                                       ("slimify.models:TinyNet", "TinyNet")])
def test_create_resolves_the_allowed_sources(spec: str, cls: str) -> None:
    model = create(spec, num_classes=5)
    assert type(model).__name__ == cls and source_of(model) == ModelSource(spec, {"num_classes": 5})


@pytest.mark.parametrize("spec, message", [
    ("os:system", "not allowed"), ("subprocess:Popen", "not allowed"), ("builtins:eval", "not allowed"),
    ("timm.models._hub:download_cached_file", "not a model factory"), ("torchvision.models:get_weight", "not a model"),
    ("timm.models:load_checkpoint", "not a model factory"), ("no_such_model_xyz", "no_such_model_xyz"),
    ("torchvision:nope", "Unknown model"), ("slimify:nope", "unknown slimify example"), (":x", "empty"),
])
def test_create_refuses_other_sources(spec: str, message: str) -> None:
    with pytest.raises(SlimifyError, match=message):
        create(spec)


@pytest.mark.parametrize("kwargs, message", [({"pretrained": True}, "'pretrained' is not accepted"),
                                             ({"checkpoint_path": "/etc/passwd"}, "checkpoint_path"),
                                             ({"act_layer": nn.ReLU}, "plain JSON data")])
def test_create_refuses_unsafe_kwargs(kwargs: dict, message: str) -> None:
    with pytest.raises(SlimifyError, match=message):
        create("resnet10t", **kwargs)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_create_loads_a_checkpoint(tmp_path, suffix: str) -> None:
    original = _randomize(TinyNet(num_classes=3)).eval()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(original.state_dict(), str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in original.state_dict().items()}}, path)
    model = create("slimify:tinynet", checkpoint=path, num_classes=3).eval()
    assert torch.equal(model(X32), original(X32))


def test_checkpoint_mismatch_names_the_keys(tmp_path) -> None:
    state = TinyNet(num_classes=3).state_dict()
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(SlimifyError, match=r"missing \(1\): fc.bias.*unexpected \(1\): extra.weight.*shape.*fc.weight"):
        create("slimify:tinynet", checkpoint=tmp_path / "w.pt")  # 10 classes: fc has the wrong shape
    torch.save({"model": nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a pickled module: weights_only refuses
    with pytest.raises(SlimifyError, match="cannot read weights safely"):
        create("slimify:tinynet", checkpoint=tmp_path / "pickled.pt")


def test_source_is_inferred_for_models_built_elsewhere() -> None:
    import timm
    import torchvision

    assert source_of(torchvision.models.resnet34(num_classes=7)) == ModelSource("torchvision:resnet34", {"num_classes": 7})
    assert source_of(timm.create_model("resnet10t")) == ModelSource("resnet10t", {})
    with pytest.raises(SlimifyError, match="cannot tell how to rebuild"):
        source_of(nn.Sequential(nn.Conv2d(3, 8, 3)))


# -- save / load --------------------------------------------------------------------------------
def test_round_trip_is_exact_at_every_switch(tmp_path) -> None:
    model = _tiny()
    slimify.set_width(model, 0.5)
    path = slimify.save(model, tmp_path / "m.slim")
    loaded = slimify.load(path)
    assert slimify.get_width(loaded) == 0.5 and not loaded.training
    assert slimify.switches(loaded) == slimify.switches(model)
    want, got = _outputs(model), _outputs(loaded)
    assert all(torch.equal(want[w], got[w]) for w in want)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    config = read_config(path)
    assert config["source"] == {"spec": "slimify:tinynet", "kwargs": {"num_classes": 7}}
    divisors = [g.divisor for g in slimify.report(model).groups]
    assert config["conversion"] == {"switches": [0.25, 0.5, 0.75, 1.0], "divisor": None, "example_shape": [1, 3, 32, 32],
                                    "group_divisors": divisors}  # None: automatic, per group
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.slim"]


def test_round_trip_of_a_timm_model_and_a_training_digitsnet(tmp_path) -> None:
    from slimify.train.testing import slim_digitsnet

    for model in (slimify.convert(create("resnet10t"), (0.5, 1.0), example_input=torch.randn(1, 3, 64, 64)),
                  slim_digitsnet()):  # built by slimify.train, no recorded source: inferred
        model = _randomize(model).eval()
        path = slimify.save(model, tmp_path / f"{type(model).__name__}.slim")
        loaded = slimify.load(path)
        x = torch.randn(1, 3, 64, 64)
        for w in slimify.switches(model):
            with torch.no_grad(), slimify.width(model, w), slimify.width(loaded, w):
                assert torch.equal(model(x), loaded(x))


def test_save_never_overwrites_unless_asked(saved: Path, tmp_path) -> None:
    target = tmp_path / "m.slim"
    target.write_bytes(b"precious")
    with pytest.raises(SlimifyError, match="already exists"):
        slimify.save(_tiny(), target)
    assert target.read_bytes() == b"precious"
    slimify.save(_tiny(), target, overwrite=True)
    assert read_config(target)["format"] == "slimify"
    with pytest.raises(SlimifyError, match="not a slimmable model"):
        slimify.save(TinyNet(), tmp_path / "plain.slim")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.slim"]


def test_load_never_unpickles(saved: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("load unpickled something")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    assert slimify.switches(slimify.load(saved)) == (0.25, 0.5, 0.75, 1.0)


def _set(path: list[str], value):
    def change(config: dict) -> None:
        target = config
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


@pytest.mark.parametrize("config_change, message", [
    (_set(["version"], 2), "format version 2, newer than this slimify reads"),
    (_set(["format"], "other"), "not a slimify model file"),
    (_set(["source"], {"spec": "os:system", "kwargs": {}}), "'os' is not allowed"),
    (_set(["source"], {"spec": "subprocess:Popen", "kwargs": {"args": "touch /tmp/pwned"}}), "not allowed"),
    (_set(["source"], {"spec": "resnet10t", "kwargs": {"pretrained": True}}), "'pretrained' is not accepted"),
    (_set(["source"], "resnet18"), "model source must be"),
    (_set(["conversion", "switches"], [0.5, 1.0]), "slims differently"),
    (_set(["plan_sha256"], "0" * 64), "slims differently"),
    (_set(["conversion", "example_shape"], [1, 3, 10**6, 10**6]), "conversion settings"),
    (_set(["width"], 0.3), "conversion settings"),
])
def test_bad_configs_are_refused(saved: Path, tmp_path, config_change, message: str) -> None:
    bad = rewrite_slim(saved, tmp_path / "bad.slim", config_change=config_change)
    with pytest.raises(SlimifyError, match=message):
        slimify.load(bad)


def test_wrong_tensors_are_refused(saved: Path, tmp_path) -> None:
    def reshape(t: dict) -> None:
        t["fc.weight"] = torch.zeros(7, 3)

    def drop(t: dict) -> None:
        t.pop("stem.1.slim_bn.0.running_var")

    with pytest.raises(SlimifyError, match=r"shape \(1\): fc.weight \(7, 3\)"):
        slimify.load(rewrite_slim(saved, tmp_path / "a.slim", tensor_change=reshape))
    with pytest.raises(SlimifyError, match=r"missing \(1\): stem.1.slim_bn.0.running_var"):
        slimify.load(rewrite_slim(saved, tmp_path / "b.slim", tensor_change=drop))
    with pytest.raises(SlimifyError, match="does not match the recorded checksum"):  # same shapes, other data
        slimify.load(rewrite_slim(saved, tmp_path / "c.slim", tensor_change=lambda t: t["fc.bias"].add_(1),
                              fix_digest=False))


def test_damaged_files_are_refused(saved: Path, tmp_path) -> None:
    data = saved.read_bytes()
    cases = {"empty.slim": b"", "short.slim": data[:5], "text.slim": b"hello world, not a model" * 10,
             "cut.slim": data[:-100], "long.slim": data + b"\0" * 16}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.slim"))
    flipped = bytearray(data)
    flipped[-50] ^= 0xFF  # inside the tensor data
    (tmp_path / "flip.slim").write_bytes(bytes(flipped))
    expected = {"empty.slim": "is empty", "short.slim": "truncated or not", "text.slim": "truncated or not",
                "cut.slim": "truncated or corrupt", "long.slim": "truncated or corrupt",
                "plain.slim": "without slimify metadata", "flip.slim": "checksum"}
    for name, message in expected.items():
        with pytest.raises(SlimifyError, match=message):
            slimify.load(tmp_path / name)
    with pytest.raises(SlimifyError, match="does not exist"):
        slimify.load(tmp_path / "missing.slim")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 0.9999))
def test_any_truncation_is_a_slimify_error(saved: Path, tmp_path_factory, cut: float) -> None:
    data = saved.read_bytes()
    path = tmp_path_factory.mktemp("cut") / "cut.slim"
    path.write_bytes(data[:int(cut * len(data))])
    with pytest.raises(SlimifyError):
        slimify.load(path)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(position=st.floats(0.0, 0.9999), bit=st.integers(0, 7))
def test_a_flipped_bit_is_refused_or_harmless(saved: Path, tmp_path_factory, position: float, bit: int) -> None:
    """A bit flip anywhere either raises a SlimifyError or (e.g. in the model's display name)
    still loads a model that computes exactly what the saved one did."""
    data = bytearray(saved.read_bytes())
    data[int(position * len(data))] ^= 1 << bit
    path = tmp_path_factory.mktemp("flip") / "flip.slim"
    path.write_bytes(bytes(data))
    try:
        model = slimify.load(path)
    except SlimifyError:
        return
    reference = slimify.load(saved)
    want, got = _outputs(reference), _outputs(model)
    assert all(torch.equal(want[w], got[w]) for w in want)
