"""The CLI's data pipeline follows the input size a model was converted with: a timm model trained
and converted at 32 px is evaluated, calibrated and fine-tuned at 32 px (not at timm's default),
and ``--input-size`` overrides it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import slimify
from slimify.cli.app import cli
from slimify.train.data import model_transform, recorded_input_size
from slimify.train.evaluate import evaluate
from tests.digit_folder import ARCH, SIZE, train_timm_at, write_digit_folder


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    """(digits ImageFolder root, .slim of a test_resnet trained on it and converted at 32 px)."""
    from safetensors.torch import save_file

    root = write_digit_folder(tmp_path_factory.mktemp("digits"))
    weights = root.parent / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in train_timm_at(root / "train").state_dict().items()}, str(weights))
    slim = root.parent / "model.slim"
    result = CliRunner().invoke(cli, ["convert", ARCH, "--num-classes", "10", "--input-size", str(SIZE),
                                      "--checkpoint", str(weights), "--switches", "0.5,1.0", "-o", str(slim)])
    assert result.exit_code == 0, result.output
    return root, slim


def _api_eval(slim: Path, val: Path) -> dict[float, float]:
    """Top-1 through the API, with timm's own pipeline at 32 px built here, independently of the CLI."""
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    net = slimify.load(slim)
    tf = create_transform(**resolve_data_config({"input_size": (3, SIZE, SIZE)}, model=net))
    return evaluate(net, ImageFolder(str(val), transform=tf)).top1()


def _cli_eval(slim: Path, data: Path, out: Path, *extra: str) -> dict[float, float]:
    result = CliRunner().invoke(cli, ["eval", str(slim), "--data", str(data), "--json", str(out), *extra])
    assert result.exit_code == 0, result.output
    return {row["width"]: row["top1"] for row in json.loads(out.read_text())}


def test_cli_eval_uses_the_recorded_input_size(converted, tmp_path) -> None:
    root, slim = converted
    api = _api_eval(slim, root / "val")
    assert api[1.0] > 60  # 10 classes: chance is 10 %
    assert _cli_eval(slim, root / "val", tmp_path / "m.json") == pytest.approx(api, abs=1e-9)


def test_input_size_option_overrides_the_recorded_size(converted, tmp_path) -> None:
    root, slim = converted
    at_160 = _cli_eval(slim, root / "val", tmp_path / "m.json", "--input-size", "160", "--widths", "1.0")
    assert at_160[1.0] < _api_eval(slim, root / "val")[1.0] - 30  # trained at 32 px: 160 px is another task


def test_cli_calibrate_uses_the_recorded_input_size(converted, tmp_path) -> None:
    root, slim = converted
    out = tmp_path / "cal.slim"
    result = CliRunner().invoke(cli, ["calibrate", str(slim), "--data", str(root / "train"), "--batches", "4",
                                      "--batch-size", "64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert _cli_eval(out, root / "val", tmp_path / "m.json", "--widths", "1.0")[1.0] > 60  # BN stats from 32 px
    assert recorded_input_size(slimify.load(out)) == (3, SIZE, SIZE)


def test_model_transform_follows_recorded_size_without_timm_config() -> None:
    net = slimify.convert(slimify.store.sources.create("slimify:tinynet"), switches=(0.5, 1.0),
                          example_input=torch.randn(1, 3, 48, 48))
    image = Image.new("RGB", (100, 80))
    assert recorded_input_size(net) == (3, 48, 48)
    assert model_transform(net, train=False)(image).shape == (3, 48, 48)
    assert model_transform(net, train=True)(image).shape == (3, 48, 48)
    assert model_transform(net, train=False, input_size=(3, 40, 56))(image).shape == (3, 40, 56)
    assert recorded_input_size(slimify.store.sources.create("slimify:tinynet")) is None


def test_cli_finetune_prints_a_baseline_at_the_recorded_size_and_keeps_accuracy(converted, tmp_path) -> None:
    root, slim = converted
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["finetune", str(slim), "--data", str(root), "--recipe", "demo", "--epochs", "1",
                                      "--lr", "0.002", "--batch-size", "64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    before = result.output.split("before fine-tuning:\n", 1)[1].splitlines()
    assert before[1].split()[:2] == ["1.00", f"{_api_eval(slim, root / 'val')[1.0]:.2f}"]
    assert _cli_eval(out / "model.slim", root / "val", tmp_path / "m.json", "--widths", "1.0")[1.0] > 60


def test_workers_are_capped_at_the_cpus_there_are(monkeypatch) -> None:
    from slimify.train import loader

    monkeypatch.setattr(loader, "cpus_available", lambda: 2)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert [loader.usable_workers(n) for n in (None, 0, 1, 8)] == [2, 0, 1, 2]
    monkeypatch.setattr(loader, "cpus_available", lambda: 64)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert [loader.usable_workers(n) for n in (None, 4, 32)] == [8, 4, 16]
