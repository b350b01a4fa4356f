"""finetune from random weights (issue 27, item 9): a model name without weights, and a ``.slim``
converted from one (the file records that its weights were never trained), are said to train
from scratch, and ``narrow_loss: distill`` is flagged as needing a trained widest switch; the
shipped recipes for training from scratch use labels."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from slimify.store.digits_net import DigitsNet
from slimify.store.slimfile import read_config
from tests.test_cli import run  # main(args) → (exit code, stdout, stderr)

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--data", "digits", "--recipe", "demo", "--epochs", "1", "--no-progress"]
DISTILL = "narrow_loss: distill teaches the narrow switches"


def _convert(tmp_path: Path, capsys, *weights: str) -> Path:
    out = tmp_path / f"m{len(weights)}.slim"
    code, _, err = run(["convert", "slimify:digitsnet", "--input-size", "32", *weights, "-o", out], capsys)
    assert code == 0, err
    return out


def test_a_slim_of_random_weights_says_so_until_it_is_trained(tmp_path: Path, capsys) -> None:
    random = _convert(tmp_path, capsys)
    assert read_config(random).get("random_init") is True
    code, out, err = run(["finetune", random, *FAST, "-o", tmp_path / "run"], capsys)
    assert code == 0, err
    assert "holds random weights" in out and DISTILL in out and "--narrow-loss labels" in out
    assert "random_init" not in read_config(tmp_path / "run" / "model.slim")  # trained now
    code, out, err = run(["finetune", tmp_path / "run" / "model.slim", *FAST, "-o", tmp_path / "again"], capsys)
    assert code == 0 and "random weights" not in out and DISTILL not in out, err


def test_labels_or_trained_weights_need_no_distillation_warning(tmp_path: Path, capsys) -> None:
    code, out, err = run(["finetune", "slimify:digitsnet", *FAST, "--narrow-loss", "labels", "-o", tmp_path / "a"],
                         capsys)
    assert code == 0 and "starts from random weights" in out and DISTILL not in out, err
    torch.manual_seed(0)
    torch.save(DigitsNet().state_dict(), tmp_path / "w.pt")
    trained = _convert(tmp_path, capsys, "--checkpoint", str(tmp_path / "w.pt"))
    assert "random_init" not in read_config(trained)
    code, out, err = run(["finetune", trained, *FAST, "-o", tmp_path / "b"], capsys)
    assert code == 0 and "random weights" not in out and DISTILL not in out, err


def test_shipped_recipes_from_scratch_learn_from_labels() -> None:
    folder = Path(__file__).resolve().parents[1] / "slimify" / "recipes"
    scratch = {}
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text()
        if "from scratch" in text.split("\n", 1)[0]:  # what the recipe's first line says it is for
            scratch[path.stem] = yaml.safe_load(text).get("narrow_loss")
    assert scratch and set(scratch.values()) == {"labels"}, scratch
