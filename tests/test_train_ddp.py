"""Two CPU processes (gloo) train to identical weights, all-reducing gradients once per step."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Subset

SWITCHES = (0.25, 0.5, 0.75, 1.0)
STEPS = 4  # per epoch: 128 images / 2 processes / batch 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    import slimify.train.loop as loop
    from slimify.train import digits, finetune
    from slimify.train.testing import slim_digitsnet

    calls: list[int] = []
    original = loop.wrap_ddp

    def counting_wrap(*args, **kwargs):  # count gradient all-reduces (one bucket for this tiny model)
        ddp = original(*args, **kwargs)

        def hook(state, bucket):
            calls.append(1)
            return default_hooks.allreduce_hook(None, bucket)

        ddp.register_comm_hook(None, hook)
        return ddp

    loop.wrap_ddp = counting_wrap
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    model = slim_digitsnet(SWITCHES)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    result = finetune(model, Subset(digits("train"), range(128)), "demo", val_data=Subset(digits("val"), range(64)),
                      out_dir=Path(out) / "run", epochs=1, batch_size=16, log_every=1, calibrate_batches=2,
                      progress=False)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, initial[k])]
    torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(
        {"allreduces": len(calls), "step": result.step, "changed": len(changed),
         "top1": result.eval.top1()[1.0] if result.eval else None}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(tmp_path) -> None:
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    assert info[0]["step"] == info[1]["step"] == STEPS
    assert info[0]["allreduces"] == info[1]["allreduces"] == STEPS  # once per step, not once per switch
    assert info[0]["changed"] > 0 and info[0]["top1"] == info[1]["top1"]
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "log.csv", "log.jsonl"]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == list(range(1, STEPS + 1))  # rank 0 only
    assert records[0]["world"] == 2


@pytest.mark.slow
def test_torchrun_cli(tmp_path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "slimify", "finetune", "slimify:digitsnet", "--data", "digits",
           "--recipe", "demo", "--epochs", "1", "--batch-size", "64", "--divisor", "4", "--switches",
           "0.5,1.0", "-o", str(tmp_path / "run"), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("width") == 3  # only rank 0 prints the tables (baseline, before and after BN calibration)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[0]["world"] == 2 and records[0]["steps_per_epoch"] == 1437 // 2 // 64
