"""Numerical faults stop a run cleanly (issue 8): a NaN or infinite loss ends fine-tuning with one
line naming the switch and the step, before that step updates the weights, and the last good
checkpoint stays on disk, loadable and finite, so the run can resume from it."""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils.data import Subset

import slimify
from slimify.cli.app import main
from slimify.errors import SlimifyError
from slimify.train import digits, finetune
from slimify.train.checkpoint import load_checkpoint
from slimify.train.loop import CHECKPOINT_NAME, Trainer
from slimify.train.progress import read_log
from slimify.train.recipe import load_recipe
from slimify.train.testing import slim_digitsnet

pytestmark = pytest.mark.usefixtures("one_thread")

SWITCHES = (0.25, 0.5, 0.75, 1.0)
Poison = Callable[[torch.Tensor], torch.Tensor]


def nan_logits(logits: torch.Tensor) -> torch.Tensor:
    return logits + float("nan")


def inf_loss_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits whose cross-entropy is +inf for every label but 0 (a certain -inf log-probability)."""
    mask = torch.zeros_like(logits)
    mask[:, 1:] = -math.inf
    return logits * 0 + mask  # keeps the autograd graph, like a real overflow would


def poison_at(model: nn.Module, step: int, width: float, poison: Poison) -> None:
    """From optimizer step ``step`` (1-based) on, the logits of switch ``width`` are poisoned."""
    steps = [0]

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        w = slimify.get_width(module)
        steps[0] += w == max(SWITCHES)  # the widest switch runs first in every step
        return poison(output) if steps[0] >= step and w == width else None

    model.register_forward_hook(hook)


def small_data(n: int = 128) -> Subset:
    return Subset(digits("train"), range(n))


def run(model: nn.Module, out: Path, **overrides: object) -> object:
    kw = dict(epochs=1, batch_size=16, workers=0, calibrate_batches=0, checkpoint_every=2, progress=False)
    return finetune(model, small_data(), "demo", out_dir=out, **{**kw, **overrides})


def finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def test_nan_loss_stops_before_the_update_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = slim_digitsnet(SWITCHES)
    poison_at(model, step=5, width=0.5, poison=nan_logits)
    with pytest.raises(SlimifyError) as error:
        run(model, tmp_path)
    message = str(error.value)
    assert "\n" not in message and "loss is nan at width 0.5 in step 5 (epoch 1)" in message, message
    assert f"last good checkpoint is {tmp_path / CHECKPOINT_NAME}" in message and "learning rate" in message
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["step"] == 4 and finite(state["model"])
    for name, p in model.named_parameters():  # step 5 did not touch the weights
        assert torch.equal(p.detach(), state["model"][name]), name
    last = read_log(tmp_path / "log.jsonl")[-1]
    assert {k: last.get(k) for k in ("event", "step", "width", "loss")} == \
        {"event": "diverged", "step": 5, "width": 0.5, "loss": "nan"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME, "log.jsonl"]  # no temp files


def test_the_kept_checkpoint_resumes_to_the_end(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = slim_digitsnet(SWITCHES)
    poison_at(model, step=3, width=1.0, poison=nan_logits)
    with pytest.raises(SlimifyError, match="width 1 in step 3"):
        run(model, tmp_path)
    fresh = slim_digitsnet(SWITCHES)  # e.g. the user fixed the data and runs again with --resume
    result = run(fresh, tmp_path, resume=True)
    assert result.finished and result.step == 8 and finite(fresh.state_dict())
    assert [r["event"] for r in read_log(tmp_path / "log.jsonl")].count("resume") == 1


def test_inf_loss_without_any_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = slim_digitsnet(SWITCHES)
    poison_at(model, step=3, width=0.25, poison=inf_loss_logits)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(SlimifyError, match=r"loss is inf at width 0.25 in step 3 .*no checkpoint kept"):
        run(model, tmp_path, checkpoint_every=0)
    assert not (tmp_path / CHECKPOINT_NAME).exists()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())  # steps 1-2 did train


def test_a_diverged_model_never_replaces_a_good_checkpoint(tmp_path: Path) -> None:
    model = slim_digitsnet(SWITCHES)
    recipe = load_recipe("demo", batch_size=16, workers=0)
    trainer = Trainer(model, small_data(), recipe, torch.device("cpu"), tmp_path, False, None)
    good = trainer.save()
    assert good is not None
    saved = good.read_bytes()
    with torch.no_grad():
        dict(model.named_parameters())["0.weight"][0, 0, 0, 0] = math.inf
    with pytest.raises(SlimifyError, match=r"0.weight is not finite .*last good checkpoint is kept"):
        trainer.save()
    assert good.read_bytes() == saved


def test_huge_learning_rate_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "huge.yaml"
    recipe.write_text("epochs: 1\nbatch_size: 64\nlr: 1.0e+30\nmomentum: 0.0\nworkers: 0\ncalibrate_batches: 0\n"
                      "checkpoint_every: 1\nwarmup_epochs: 0\n")
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "slimify:digitsnet", "--data", "digits", "--switches", "0.5,1", "--recipe", str(recipe),
              "-o", str(run_dir), "--no-progress"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in out + err, err
    assert re.search(r"error: (loss is (nan|inf) at width (0.5|1) in step \d+|after step \d+, \S+ is not finite)",
                     err), err
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    assert finite(state["model"]) and state["step"] >= 1
    assert sorted(p.name for p in run_dir.iterdir()) == [CHECKPOINT_NAME, "log.csv", "log.jsonl"]  # no model, no temps
