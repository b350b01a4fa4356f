"""Users' own models (issue 17): a class defined here (not in timm/torchvision/slimify) goes
through save/load with ``model=`` and, with an explicit ``--trust-source``, through every CLI
command; without the opt-in it is refused with one line naming it; save says at once when load
could not rebuild the model by itself."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import slimify
from slimify.errors import SlimifyError, SlimifyWarning
from slimify.store.sources import TinyNet, set_source
from slimify.store.trust import TRUST_ENV, trusted
from tests.test_cli import run  # main(args) → (exit code, stdout, stderr)

pytestmark = pytest.mark.usefixtures("one_thread")


class UserNet(nn.Module):
    """A user's own CNN: two convolutions with BatchNorm and a classifier."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
                                      nn.ReLU())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


SPEC = f"{__name__}:UserNet"  # tests.test_user_models:UserNet


def _converted(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return slimify.convert(UserNet(width=width), example_input=torch.randn(1, 3, 32, 32)).eval()


@pytest.fixture(scope="module")
def user_slim(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("user") / "user.slim"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlimifyWarning)
        slimify.save(_converted(), path)
    return path


def test_save_says_when_load_cannot_rebuild(tmp_path: Path) -> None:
    with pytest.warns(SlimifyWarning, match=r"cannot rebuild UserNet.*--trust-source tests.*"
                                            r"slimify.load\(path, model=UserNet\(...\)\)"):
        slimify.save(_converted(), tmp_path / "a.slim")
    assert (tmp_path / "a.slim").is_file()
    with trusted("tests"):  # trusted, but built with another width than the default: the arguments are missing
        with pytest.warns(SlimifyWarning, match="builds other tensors.*set_source"):
            slimify.save(_converted(width=8), tmp_path / "b.slim")
        model = _converted(width=8)
        set_source(model, SPEC, width=8)
        with warnings.catch_warnings():
            warnings.simplefilter("error", SlimifyWarning)  # rebuildable: no warning
            slimify.save(model, tmp_path / "c.slim")
        assert slimify.switches(slimify.load(tmp_path / "c.slim")) == (0.25, 0.5, 0.75, 1.0)


def test_load_into_a_fresh_instance(user_slim: Path) -> None:
    want = _converted()
    loaded = slimify.load(user_slim, model=UserNet())
    x = torch.randn(2, 3, 32, 32)
    for w in slimify.switches(want):
        with slimify.width(want, w), slimify.width(loaded, w), torch.no_grad():
            assert torch.equal(want(x), loaded(x))


@pytest.mark.parametrize("make, message", [
    (lambda: UserNet(width=8), r"the UserNet passed to load does not match the model: shape"),
    (lambda: UserNet(num_classes=3), r"does not match the model: shape \(2\): fc.bias \(3,\) ≠ \(10,\)"),
    (lambda: TinyNet(), "holds a UserNet, not a TinyNet"),
    (lambda: _converted(), "fresh, unconverted instance"),
    (lambda: "UserNet", "takes a torch.nn.Module, got str"),
])
def test_load_refuses_an_instance_that_does_not_match(user_slim: Path, make, message: str) -> None:
    with pytest.raises(SlimifyError, match=message):
        slimify.load(user_slim, model=make())


def test_user_source_needs_an_explicit_opt_in(user_slim: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(SlimifyError, match="source 'tests.test_user_models' is not allowed.*--trust-source tests"):
        slimify.load(user_slim)
    code, _, err = run(["inspect", user_slim], capsys)
    assert code == 2 and "--trust-source tests" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(["--trust-source", "tests", "inspect", user_slim], capsys)
    assert code == 0 and "UserNet" in out, err
    code, _, err = run(["inspect", user_slim], capsys)  # the opt-in lasted for one command only
    assert code == 2
    monkeypatch.setenv(TRUST_ENV, "tests")
    assert slimify.switches(slimify.load(user_slim)) == (0.25, 0.5, 0.75, 1.0)
    monkeypatch.setenv(TRUST_ENV, "os;rm")
    with pytest.raises(SlimifyError, match="not a package name"):
        slimify.load(user_slim)


def test_trusted_package_still_names_only_model_factories(user_slim: Path, capsys) -> None:
    code, _, err = run(["--trust-source", "tests", "inspect", "tests.test_user_models:run", "--input-size", "32"],
                       capsys)  # a function of a trusted package that is not a model: it fails, nothing else
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_every_command_with_a_user_model(user_slim: Path, tmp_path: Path, capsys) -> None:
    trust = ["--trust-source", "tests"]
    code, out, err = run([*trust, "inspect", SPEC, "--input-size", "32"], capsys)
    assert code == 0 and "UserNet" in out, err
    code, out, err = run([*trust, "convert", SPEC, "--input-size", "32", "-o", tmp_path / "c.slim"], capsys)
    assert code == 0 and (tmp_path / "c.slim").is_file(), err
    code, out, err = run([*trust, "profile", user_slim, "--runs", "2", "--warmup", "1"], capsys)
    assert code == 0 and "width" in out, err
    code, out, err = run([*trust, "pick", user_slim, "--params", "1M", "-o", tmp_path / "p.onnx"], capsys)
    assert code == 0 and "picked width 1" in out and (tmp_path / "p.onnx").is_file(), err
    code, out, err = run([*trust, "export", user_slim, "--width", "0.5", "-o", tmp_path / "m.pt2"], capsys)
    assert code == 0 and "dynamic: batch" in out, err
    code, out, err = run([*trust, "export", user_slim, "--all-widths", "-o", tmp_path / "all.onnx"], capsys)
    assert code == 0, err
    code, out, err = run([*trust, "finetune", user_slim, "--data", "digits", "--recipe", "demo", "--epochs", "1",
                          "--no-progress", "-o", tmp_path / "run"], capsys)
    assert code == 0, err
    tuned = slimify.load(tmp_path / "run" / "model.slim", model=UserNet())
    assert slimify.switches(tuned) == (0.25, 0.5, 0.75, 1.0)
    from slimify.deploy.accuracy import stored_accuracy

    accuracy = stored_accuracy(tuned)  # finetune's final evaluation travels in the .slim
    assert accuracy is not None and sorted(accuracy) == [0.25, 0.5, 0.75, 1.0]
