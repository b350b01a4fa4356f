"""The data config is part of the model (issue 22): crop percentage, mean, std and interpolation
are options of every data command, finetune records the config it trained with in the run's
model (.slim and checkpoint), later commands use the recorded one unless told otherwise, and
``inspect`` shows it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import slimify
from slimify.cli.app import cli
from slimify.errors import SlimifyError
from slimify.preprocess import DEFAULTS, DataConfig
from slimify.store.sources import create
from slimify.train.checkpoint import load_checkpoint
from slimify.train.data import model_transform
from slimify.train.data_config import record_data_config, recorded_data_config, resolved_data_config
from slimify.train.resolve import load_slimmable, save_model
from tests.digit_folder import write_digit_folder

SIZE = (3, 32, 32)


def _tiny() -> torch.nn.Module:
    return slimify.convert(create("slimify:tinynet"), (0.5, 1.0), example_input=torch.randn(1, *SIZE))


def _gradient_image() -> Image.Image:
    """64x64, a horizontal ramp: any change of crop, resize or normalisation changes the tensor."""
    ramp = torch.arange(64, dtype=torch.uint8).mul(4).repeat(64, 1)
    return Image.fromarray(torch.stack([ramp] * 3, -1).numpy())


def test_given_beats_recorded_beats_the_models_own_beats_the_defaults() -> None:
    import timm

    net = _tiny()
    assert {k: resolved_data_config(net, SIZE)[k] for k in DEFAULTS} == {k: DEFAULTS[k] for k in DEFAULTS}
    timm_net = timm.create_model("test_resnet", num_classes=3)
    own = timm_net.pretrained_cfg
    assert resolved_data_config(timm_net, SIZE)["crop_pct"] == own["crop_pct"] != DEFAULTS["crop_pct"]
    assert resolved_data_config(timm_net, SIZE)["mean"] == tuple(own["mean"])
    record_data_config(net, DataConfig(crop_pct=1.0, mean=(0.5,)))
    resolved = resolved_data_config(net, SIZE)
    assert resolved["crop_pct"] == 1.0 and resolved["mean"] == (0.5, 0.5, 0.5) and resolved["std"] == DEFAULTS["std"]
    given = resolved_data_config(net, SIZE, DataConfig(crop_pct=0.5, std=(0.2, 0.3, 0.4)))
    assert given["crop_pct"] == 0.5 and given["std"] == (0.2, 0.3, 0.4) and given["mean"] == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("fields, message", [
    ({"crop_pct": 0.0}, "(0, 1]"), ({"crop_pct": 1.5}, "(0, 1]"), ({"std": (0.5, 0.0, 0.5)}, "positive"),
    ({"mean": (float("nan"),)}, "finite"), ({"interpolation": "cubic"}, "one of"),
])
def test_bad_values_are_one_error(fields: dict, message: str) -> None:
    with pytest.raises(SlimifyError, match=message.replace("(", r"\(").replace("]", r"\]")):
        DataConfig(**fields)


def test_mean_of_the_wrong_length_for_the_model() -> None:
    with pytest.raises(SlimifyError, match="has 2 values but the model takes 3 channels"):
        resolved_data_config(_tiny(), SIZE, DataConfig(mean=(0.5, 0.5)))


def test_the_transform_applies_crop_mean_std_and_interpolation() -> None:
    net, image = _tiny(), _gradient_image()
    default = model_transform(net, train=False)(image)
    uncropped = model_transform(net, train=False, data_config=DataConfig(crop_pct=1.0))(image)
    assert default.shape == uncropped.shape == SIZE and not torch.equal(default, uncropped)
    # crop 1: the whole ramp; crop 0.875 cuts its ends off, so the range narrows
    assert (uncropped[0, 0, -1] - uncropped[0, 0, 0]) > (default[0, 0, -1] - default[0, 0, 0])
    plain = model_transform(net, train=False, data_config=DataConfig(crop_pct=1.0, mean=(0.0,), std=(1.0,)))(image)
    halved = model_transform(net, train=False, data_config=DataConfig(crop_pct=1.0, mean=(0.5,), std=(0.5,)))(image)
    torch.testing.assert_close(halved, (plain - 0.5) / 0.5)
    nearest = model_transform(net, train=False, data_config=DataConfig(crop_pct=1.0, mean=(0.0,), std=(1.0,),
                                                                        interpolation="nearest"))(image)
    assert not torch.equal(nearest, plain)
    record_data_config(net, DataConfig(crop_pct=1.0, mean=(0.0,), std=(1.0,)))  # recorded: used without asking
    torch.testing.assert_close(model_transform(net, train=False)(image), plain)


def test_slim_file_and_checkpoint_keep_the_config(tmp_path: Path) -> None:
    net = _tiny()
    cfg = DataConfig(crop_pct=1.0, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), interpolation="bicubic")
    record_data_config(net, cfg)
    assert recorded_data_config(slimify.load(slimify.save(net, tmp_path / "m.slim"))) == cfg
    spec = {"name": "slimify:tinynet", "switches": [0.5, 1.0], "divisor": None, "input_size": list(SIZE)}
    save_model(net, spec, tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.pt")["model_spec"]["data_config"] == cfg.given()
    rebuilt, _ = load_slimmable(str(tmp_path / "m.pt"))
    assert recorded_data_config(rebuilt) == cfg


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("digits"), {"train": 64, "val": 40})


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _metrics(model: Path, data: Path, out: Path, *extra: str) -> list[dict]:
    _run("eval", model, "--data", data, "--workers", "0", "--json", out, "--force", *extra)
    return json.loads(out.read_text())


def test_finetune_records_its_config_and_later_commands_use_it(folder: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    flags = ("--crop-pct", "1", "--mean", "0.5", "--std", "0.5", "--interpolation", "bicubic")
    _run("finetune", "slimify:digitsnet", "--data", folder, "--input-size", "32", "--recipe", "demo", "--epochs", "1",
         "--batch-size", "32", "--workers", "0", "--switches", "0.5,1.0", "--no-progress", *flags, "-o", run)
    expected = DataConfig(crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")
    assert recorded_data_config(slimify.load(run / "model.slim")) == expected
    assert load_checkpoint(run / "checkpoint.pt")["model_spec"]["data_config"] == expected.given()
    val, out = folder / "val", tmp_path / "m.json"
    recorded = _metrics(run / "model.slim", val, out)
    assert recorded == _metrics(run / "model.slim", val, out, *flags)
    assert recorded == _metrics(run / "checkpoint.pt", val, out)
    other = _metrics(run / "model.slim", val, out, "--crop-pct", "0.875", "--mean", "0.485,0.456,0.406")
    assert [r["loss"] for r in other] != [r["loss"] for r in recorded]  # a flag overrides the recorded value
    shown = _run("inspect", run / "model.slim")
    assert "data config (recorded): crop_pct 1, mean 0.5, 0.5, 0.5, std 0.5, 0.5, 0.5, interpolation bicubic" in shown
    assert json.loads(_run("inspect", run / "model.slim", "--json"))["data_config"] == expected.given()


def test_calibrate_and_search_keep_a_given_config(folder: Path, tmp_path: Path) -> None:
    slim = tmp_path / "m.slim"
    _run("convert", "slimify:digitsnet", "--input-size", "32", "--switches", "0.5,1.0", "-o", slim)
    _run("calibrate", slim, "--data", folder / "train", "--val", folder / "val", "--batches", "1",
         "--batch-size", "16", "--workers", "0", "--crop-pct", "1", "-o", tmp_path / "cal.slim")
    assert recorded_data_config(slimify.load(tmp_path / "cal.slim")).crop_pct == 1.0
    _run("search", tmp_path / "cal.slim", "--data", folder, "--params", "0.6x", "--batches", "1", "--batch-size", "8",
         "--std", "0.3", "-o", tmp_path / "s.slim")
    kept = recorded_data_config(slimify.load(tmp_path / "s.slim"))
    assert kept == DataConfig(crop_pct=1.0, std=(0.3,))  # the calibrated file's crop and the search's std
