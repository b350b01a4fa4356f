"""The loop: all switches per step, one optimizer step per batch, distillation, exact resume."""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils.data import Subset

import slimify
from slimify import SlimifyError
from slimify.store.digits_net import DigitsNet
from slimify.train import digits, finetune
from slimify.train.checkpoint import load_checkpoint, save_checkpoint
from slimify.train.loop import Trainer
from slimify.train.losses import distill_loss
from slimify.train.progress import read_log
from slimify.train.recipe import load_recipe
from slimify.train.testing import slim_digitsnet

SWITCHES = (0.25, 0.5, 0.75, 1.0)


def small_train(n: int = 128):
    return Subset(digits("train"), range(n))


def make_trainer(model, recipe="demo", n: int = 128, **overrides) -> Trainer:
    r = load_recipe(recipe, batch_size=32, workers=0, **overrides)
    return Trainer(model, small_train(n), r, torch.device("cpu"), None, False, None)


def test_every_step_runs_all_switches_widest_first() -> None:
    model = slim_digitsnet(SWITCHES)
    seen: list[float] = []
    model.register_forward_hook(lambda m, i, o: seen.append(slimify.get_width(m)))
    result = finetune(model, small_train(), "demo", epochs=1, batch_size=32, calibrate_batches=0, progress=False)
    assert result.step == 4 and result.finished
    assert seen == [1.0, 0.75, 0.5, 0.25] * 4
    assert set(result.losses) == set(SWITCHES)


def test_sandwich_runs_widest_narrowest_and_n_random() -> None:
    model = slim_digitsnet((0.25, 0.5, 0.75, 0.875, 1.0))
    seen: list[float] = []
    model.register_forward_hook(lambda m, i, o: seen.append(slimify.get_width(m)))
    finetune(model, small_train(), "demo", epochs=1, batch_size=32, sandwich=1, calibrate_batches=0, progress=False)
    steps = [seen[i:i + 3] for i in range(0, len(seen), 3)]
    assert len(seen) == 12 and all(s[0] == 1.0 and s[-1] == 0.25 for s in steps)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_gradients_of_all_switches_accumulate_before_one_step() -> None:
    torch.manual_seed(0)
    model = slim_digitsnet(SWITCHES)
    trainer = make_trainer(model, narrow_loss="labels", grad_clip=None)
    images, labels = next(iter(trainer._epoch_batches()))
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for w in (1.0, 0.75, 0.5, 0.25):
        model.zero_grad()
        with slimify.width(model, w):
            torch.nn.functional.cross_entropy(model(images), labels).backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                expected[n] += p.grad
    captured, calls = {}, []
    original_step = trainer.optimizer.step

    def spy(*args, **kwargs):
        calls.append(1)
        captured.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        return original_step(*args, **kwargs)

    trainer.optimizer.step = spy
    trainer.train_step(images, labels)
    assert len(calls) == 1
    for n, grad in captured.items():
        assert torch.allclose(grad, expected[n], atol=1e-5), n
    assert any(g.abs().sum() > 0 for g in captured.values())


def test_narrow_switches_distill_from_the_widest() -> None:
    torch.manual_seed(0)
    model = slim_digitsnet((0.5, 1.0))
    trainer = make_trainer(model, narrow_loss="distill", lr=1e-9)
    images, labels = next(iter(trainer._epoch_batches()))
    losses = trainer.train_step(images, labels)
    model.train()
    with torch.no_grad():  # the weights barely moved (lr 1e-9): recompute both switches
        teacher = model(images)
        with slimify.width(model, 0.5):
            student = model(images)
    assert losses[1.0] == pytest.approx(torch.nn.functional.cross_entropy(teacher, labels).item(), rel=1e-4)
    assert losses[0.5] == pytest.approx(distill_loss(student, teacher).item(), rel=1e-4)


def test_plain_model_trains_as_one_switch() -> None:
    torch.manual_seed(0)
    model = DigitsNet()
    result = finetune(model, digits("train"), "demo", val_data=digits("val"), epochs=2, lr=0.1,
                      calibrate_batches=0, progress=False)
    assert list(result.losses) == [1.0]
    assert result.eval is not None and result.eval[1.0].top1 > 50.0  # chance is 10%


def test_resume_is_exact(tmp_path) -> None:
    def run(out, **kwargs):
        torch.manual_seed(123)
        model = slim_digitsnet(SWITCHES)
        result = finetune(model, small_train(160), "demo", out_dir=out, epochs=2, batch_size=32,
                          checkpoint_every=3, calibrate_batches=2, progress=False, **kwargs)
        return model, result

    full, full_result = run(tmp_path / "a")
    stopped, partial = run(tmp_path / "b", stop_after=7)  # mid-epoch 2 (5 steps per epoch)
    assert not partial.finished and partial.step == 7
    assert not all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), stopped.state_dict().values()))
    resumed, result = run(tmp_path / "b", resume=True)
    assert result.finished and result.step == full_result.step == 10
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    events = [r["event"] for r in read_log(tmp_path / "b" / "log.jsonl")]
    assert events.count("start") == 1 and "resume" in events and events[-1] == "checkpoint"


def test_resume_true_without_checkpoint_starts_fresh_and_bad_path_fails(tmp_path) -> None:
    model = slim_digitsnet(SWITCHES)
    result = finetune(model, small_train(64), "demo", out_dir=tmp_path, resume=True, epochs=1, batch_size=32,
                      calibrate_batches=0, progress=False)
    assert result.step == 2 and (tmp_path / "checkpoint.pt").is_file()
    with pytest.raises(SlimifyError, match="does not exist"):
        finetune(model, small_train(64), "demo", resume=tmp_path / "nope.pt", progress=False)
    with pytest.raises(SlimifyError, match="fewer than one batch"):
        finetune(model, small_train(16), "demo", batch_size=32, progress=False)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})
    real_save = torch.save

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.setattr(torch, "save", real_save)
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temp file left behind


class NotData:  # pickled as code: a safe loader must refuse it
    pass


def test_checkpoint_never_unpickles_code(tmp_path) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"format": "slimify.train.checkpoint/1", "x": NotData()}, evil)
    with pytest.raises(SlimifyError, match="not a readable slimify checkpoint"):
        load_checkpoint(evil)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(1)}, other)
    with pytest.raises(SlimifyError, match="not a slimify training checkpoint"):
        load_checkpoint(other)


def test_log_records_switch_losses(tmp_path) -> None:
    model = slim_digitsnet((0.5, 1.0))
    finetune(model, small_train(128), "demo", out_dir=tmp_path, epochs=1, batch_size=16, log_every=2,
             calibrate_batches=0, progress=False)
    records = read_log(tmp_path / "log.jsonl")
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6, 8]
    assert set(train[0]["loss"]) == {"0.5", "1.0"} and train[0]["img_per_s"] > 0
    assert records[0]["event"] == "start" and records[0]["recipe"]["batch_size"] == 16
