"""Evaluation and BN calibration decode each image once (one pass, every switch per batch) and,
under two gloo processes, split the data and reduce: the same metrics as one process, and
calibration statistics that are the batch-weighted mean of the processes' own."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Dataset, Subset

from slimify.train import calibrate_bn, digits, evaluate
from slimify.train.calibrate import batchnorms
from slimify.train.common import at_width
from slimify.train.testing import slim_digitsnet
from tests.test_train_ddp import free_port

SWITCHES = (0.5, 1.0)
VAL, TRAIN, BATCHES, BATCH = 90, 128, 4, 16  # 90 images: the two shards differ in size


class Counting(Dataset):
    """A dataset that counts how often its images are read (decoded)."""

    def __init__(self, base: Dataset):
        self.base, self.reads = base, 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        self.reads += 1
        return self.base[i]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return slim_digitsnet(SWITCHES).eval()


def _stats(model: torch.nn.Module) -> dict[str, list[float]]:
    out = {}
    for w in SWITCHES:
        with at_width(model, w):
            for i, m in enumerate(batchnorms(model)):
                out[f"{w}/{i}/mean"] = m.running_mean.tolist()
                out[f"{w}/{i}/var"] = m.running_var.tolist()
    return out


def test_one_pass_decodes_each_image_once_and_matches_per_switch_runs() -> None:
    val = Counting(Subset(digits("val"), range(VAL)))
    model = _model()
    together = evaluate(model, val, batch_size=BATCH)
    assert val.reads == VAL  # not once per switch
    for w in SWITCHES:
        alone = evaluate(model, val, widths=(w,), batch_size=BATCH)
        assert alone[w].top1 == together[w].top1 and alone[w].loss == pytest.approx(together[w].loss, abs=1e-6)
    train = Counting(Subset(digits("train", augment=False), range(TRAIN)))  # no random shifts to tell apart
    calibrated, separately = _model(), _model()
    calibrate_bn(calibrated, train, batches=BATCHES, batch_size=BATCH)
    assert train.reads == BATCHES * BATCH
    for w in SWITCHES:
        calibrate_bn(separately, train, batches=BATCHES, batch_size=BATCH, widths=(w,))
    for key, value in _stats(calibrated).items():
        assert value == pytest.approx(_stats(separately)[key], abs=1e-6), key


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    model = _model()
    metrics = evaluate(model, Subset(digits("val"), range(VAL)), batch_size=BATCH)
    calibrate_bn(model, Subset(digits("train", augment=False), range(TRAIN)), batches=BATCHES, batch_size=BATCH)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics.to_dict(), "stats": _stats(model)}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_evaluation_and_calibration(tmp_path) -> None:
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    single = evaluate(_model(), Subset(digits("val"), range(VAL)), batch_size=BATCH).to_dict()
    for got in (ranks[0]["metrics"], ranks[1]["metrics"]):
        assert [(r["width"], r["images"], r["top1"]) for r in got] == [(r["width"], r["images"], r["top1"])
                                                                      for r in single]
        assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in single], abs=1e-6)
    assert ranks[0]["stats"] == ranks[1]["stats"]
    train = Subset(digits("train", augment=False), range(TRAIN))
    shards = []  # what each process computed from its own half before the reduction
    for rank in (0, 1):
        model = _model()
        calibrate_bn(model, Subset(train, range(rank, TRAIN, 2)), batches=BATCHES // 2, batch_size=BATCH)
        shards.append(_stats(model))
    for key, value in ranks[0]["stats"].items():
        expected = [(a + b) / 2 for a, b in zip(shards[0][key], shards[1][key])]
        assert value == pytest.approx(expected, abs=1e-5), key
