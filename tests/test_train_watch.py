"""Watching a run: progress lines when there is no terminal, a per-switch CSV log, the best
checkpoint beside the last, DistributedSampler.set_epoch on a loader of yours, timm's PrefetchLoader."""
from __future__ import annotations

import csv

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from slimify.errors import SlimifyError
from slimify.store.atomic import file_mode
from slimify.train import digits, finetune
from slimify.train.checkpoint import load_checkpoint
from slimify.train.progress import read_log
from slimify.train.testing import slim_digitsnet

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lines_csv_and_best_checkpoint(tmp_path) -> None:
    lines: list[str] = []
    model = slim_digitsnet(switches=(0.5, 1.0))
    finetune(model, Subset(digits("train"), range(256)), "demo", val_data=Subset(digits("val"), range(64)),
             out_dir=tmp_path, epochs=3, batch_size=32, log_every=4, eval_every=1, calibrate_batches=0,
             progress=False, echo=lines.append, baseline=True)
    progress = [line for line in lines if line.startswith("epoch ")]
    assert len(progress) == 3 * 8 // 4 and "loss 1:" in progress[0] and "img/s" in progress[0]
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["event"], r["width"]) for r in rows} >= {("train", "1.0"), ("train", "0.5"), ("eval", "0.5"),
                                                        ("baseline", "1.0")}
    evals = [r for r in rows if r["event"] == "eval"]
    assert len(evals) == 2 * 4  # 3 epoch ends + the final evaluation, two switches each
    best = [r for r in read_log(tmp_path / "log.jsonl") if r["event"] == "best"]
    means = [sum(float(r["top1"]) for r in evals[i:i + 2]) / 2 for i in range(0, 6, 2)]
    assert best and best[-1]["mean_top1"] == pytest.approx(max(means))
    mode = file_mode()  # the user's normal permissions, not mkstemp's 0600
    assert all((tmp_path / n).stat().st_mode & 0o777 == mode for n in ("checkpoint.pt", "best.pt", "log.csv"))
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved["best"] == pytest.approx(max(means)) and saved["step"] == best[-1]["step"]


def test_user_loader_gets_set_epoch_and_prefetch_loader_is_accepted(tmp_path) -> None:
    from timm.data.loader import PrefetchLoader

    epochs: list[int] = []

    class Recording(DistributedSampler):
        def set_epoch(self, epoch: int) -> None:
            epochs.append(epoch)
            super().set_epoch(epoch)

    data = Subset(digits("train"), range(128))
    sampler = Recording(data, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=32, sampler=sampler)
    prefetch = PrefetchLoader(loader, mean=(0.0,) * 3, std=(1.0,) * 3, device=torch.device("cpu"))
    result = finetune(slim_digitsnet(switches=(0.5, 1.0)), prefetch, "demo", epochs=2, calibrate_batches=1)
    assert epochs == [0, 1] and result.step == 2 * 4 and result.finished


def test_tensorboard_without_the_package_is_one_clear_error(tmp_path, monkeypatch) -> None:
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(SlimifyError, match="needs the tensorboard package"):
        finetune(slim_digitsnet(), digits("train"), "demo", out_dir=tmp_path, tensorboard=True, stop_after=1)
