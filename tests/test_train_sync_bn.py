"""SyncBatchNorm with private per-switch BatchNorm (recipe ``sync_bn``): torch's conversion breaks
narrow switches; slimify's keeps every switch's statistics, synchronised over the global batch
(two gloo processes on CPU), and degrades to local BatchNorm with a warning in one process."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Subset

import slimify
from slimify.errors import SlimifyError
from slimify.train import digits, finetune, sync_bn
from slimify.train.common import at_width
from slimify.train.progress import read_log
from slimify.train.sync_bn import convert_sync_batchnorm, is_synced, revert_sync_batchnorm
from slimify.train.testing import slim_digitsnet
from tests.test_train_ddp import free_port

pytestmark = pytest.mark.usefixtures("one_thread")

SWITCHES = (0.25, 0.5, 1.0)


def _bns(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def _switch_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every switch's running statistics, read through the served attributes (private ones narrow)."""
    stats = {}
    for w in SWITCHES:
        with at_width(model, w):
            for name, bn in _bns(model).items():
                stats[f"{w}:{name}.running_mean"] = bn.running_mean.detach().clone()
                stats[f"{w}:{name}.running_var"] = bn.running_var.detach().clone()
    return stats


def test_torch_conversion_breaks_narrow_switches_and_finetune_says_why() -> None:
    model = nn.SyncBatchNorm.convert_sync_batchnorm(slim_digitsnet(SWITCHES))  # built from width 1.0's tensors
    model.eval()
    with at_width(model, 0.5), pytest.raises(RuntimeError, match="running_mean should contain"):
        model(torch.randn(2, 3, 32, 32))
    with pytest.raises(SlimifyError, match="replaced after slimify.convert .* set sync_bn: true"):
        finetune(model, Subset(digits("train"), range(64)), "demo", epochs=1, batch_size=32, progress=False)


def _norm_act_net() -> nn.Module:
    """A converted net with timm's BatchNormAct2d (its own forward: BN, then drop and activation)."""
    from timm.layers import BatchNormAct2d

    net = nn.Sequential(nn.Conv2d(3, 16, 3), BatchNormAct2d(16), nn.Conv2d(16, 16, 3), nn.BatchNorm2d(16),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return slimify.convert(net, switches=SWITCHES, example_input=torch.randn(2, 3, 16, 16))


def test_conversion_keeps_switches_keys_and_outputs_and_reverts() -> None:
    torch.manual_seed(0)
    model = _norm_act_net()
    reference, classes = copy.deepcopy(model), [type(m) for m in model.modules()]
    keys = list(model.state_dict())
    assert convert_sync_batchnorm(model) is model
    synced = [m for m in model.modules() if is_synced(m)]
    assert len(synced) == 2 and isinstance(synced[0], nn.BatchNorm2d) and list(model.state_dict()) == keys
    x = torch.randn(4, 3, 16, 16)
    for training in (True, False):  # no process group: local statistics, exactly the unconverted model's
        model.train(training), reference.train(training)
        for w in SWITCHES:
            with at_width(model, w), at_width(reference, w):
                assert torch.equal(model(x), reference(x)), (training, w)
    assert [type(m) for m in revert_sync_batchnorm(model).modules()] == classes
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_batchnorm_with_an_unknown_forward_is_refused() -> None:
    class Odd(nn.BatchNorm2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * 2

    model = nn.Sequential(nn.Conv2d(3, 4, 1), Odd(4))
    with pytest.raises(SlimifyError, match="1 is a .*Odd with a forward of its own"):
        convert_sync_batchnorm(model)
    assert type(model[1]) is Odd  # refused before anything changed


def test_one_process_warns_and_trains_exactly_like_local_batchnorm() -> None:
    def run(**kwargs):
        torch.manual_seed(0)
        model = slim_digitsnet(SWITCHES)
        finetune(model, Subset(digits("train"), range(96)), "demo", epochs=1, batch_size=32, calibrate_batches=0,
                 progress=False, baseline=False, **kwargs)
        return model

    with pytest.warns(UserWarning, match="sync_bn: a single process has nothing to synchronise"):
        synced = run(sync_bn=True)
    plain = run()
    assert not any(is_synced(m) for m in synced.modules())
    for (name, a), b in zip(plain.state_dict().items(), synced.state_dict().values()):
        assert torch.equal(a, b), name


def _step_by_hand(model: nn.Module, rank: int, world: int, size: int) -> tuple[dict, dict]:
    """One forward/backward of every switch, each process on its half of a global batch, against
    the unsynchronised model on the whole batch."""
    import torch.distributed as dist

    reference = copy.deepcopy(model)  # local BatchNorm, run on the whole global batch
    images, labels = torch.randn(8 * world, 3, size, size), torch.randint(0, 10, (8 * world,))
    mine = slice(rank * 8, rank * 8 + 8)
    convert_sync_batchnorm(model)
    model.train(), reference.train()
    outputs_match = []
    for w in sorted(SWITCHES, reverse=True):  # every switch: its own private statistics
        with at_width(model, w), at_width(reference, w):
            local, ref = model(images[mine]), reference(images)
            F.cross_entropy(local, labels[mine]).backward()
            F.cross_entropy(ref, labels).backward()
            outputs_match.append(bool(torch.allclose(local, ref[mine], atol=1e-5)))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for g in grads.values():  # what DDP does: average over processes
        dist.all_reduce(g)
        g /= world
    ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    stats, ref_stats = _switch_stats(model), _switch_stats(reference)
    return {"outputs_match": outputs_match,
            "grads_match": sorted(grads) == sorted(ref_grads) and all(
                torch.allclose(grads[n], ref_grads[n], atol=1e-5) for n in grads),
            "stats_match_global_batch": all(torch.allclose(stats[k], ref_stats[k], atol=1e-5) for k in stats),
            "switches_with_stats": sorted({k.split(":")[0] for k in stats})}, stats


def worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    report: dict = {}  # 1. one step by hand; 2. finetune under DDP
    for name, build, size in (("digitsnet", lambda: slim_digitsnet(SWITCHES), 32), ("norm_act", _norm_act_net, 16)):
        torch.manual_seed(0)
        checks, stats = _step_by_hand(build(), rank, world, size)
        report.update({f"{name}:{k}": v for k, v in checks.items()})
        torch.save(stats, Path(out) / f"{name}{rank}.pt")
    bn, devices = convert_sync_batchnorm(slim_digitsnet(SWITCHES))[1], sync_bn._KERNEL_DEVICES
    sync_bn._KERNEL_DEVICES = ("cpu",)  # torch's GPU kernel path runs up to the kernel's own device check
    try:
        bn(torch.randn(2, 16, 4, 4))
    except ValueError as e:
        report["kernel_path"] = "expected input tensor to be on GPU" in str(e)
    finally:
        sync_bn._KERNEL_DEVICES = devices
    # 2. finetune under DDP with sync_bn: stopped and resumed == uninterrupted (and the classes come back)
    data = Subset(digits("train"), range(128))

    def run(run_dir: str, **kwargs):
        torch.manual_seed(1)
        net = slim_digitsnet(SWITCHES)
        finetune(net, data, "demo", out_dir=Path(out) / run_dir, epochs=2, batch_size=16, log_every=1,
                 calibrate_batches=2, progress=False, baseline=False, sync_bn=True, **kwargs)
        return net

    full = run("a")
    run("b", stop_after=6, compile="eager")  # mid-epoch 2 of 4 steps, compiled (dynamo; aot_eager costs 3x here)
    resumed = run("b", resume=True)  # uncompiled
    report["resume_exact"] = all(torch.equal(a, b) for a, b in zip(full.state_dict().values(),
                                                                    resumed.state_dict().values()))
    report["reverted"] = not any(is_synced(m) for m in full.modules())
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_sync_every_switch_over_the_global_batch(tmp_path) -> None:
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        for net in ("digitsnet", "norm_act"):
            assert report[f"{net}:outputs_match"] == [True] * len(SWITCHES)  # the global batch's statistics
            assert report[f"{net}:stats_match_global_batch"] and report[f"{net}:grads_match"], net
            assert report[f"{net}:switches_with_stats"] == [str(w) for w in SWITCHES]
        assert report["resume_exact"] and report["reverted"] and report["kernel_path"]
    for net in ("digitsnet", "norm_act"):
        stats = [torch.load(tmp_path / f"{net}{r}.pt", weights_only=True) for r in (0, 1)]
        for key, value in stats[0].items():  # the same statistics in both processes, private ones narrow
            assert torch.equal(value, stats[1][key]), key
        assert stats[0]["0.25:1.running_mean"].numel() < stats[0]["1.0:1.running_mean"].numel()
    losses = {r["step"]: r["loss"] for r in read_log(tmp_path / "b" / "log.jsonl") if r["event"] == "train"}
    reference = {r["step"]: r["loss"] for r in read_log(tmp_path / "a" / "log.jsonl") if r["event"] == "train"}
    assert losses == reference and sorted(losses) == list(range(1, 9))  # compiled, stopped, resumed: same losses


def test_cli_sync_bn_and_compile_flags_override_the_recipe(tmp_path) -> None:
    from click.testing import CliRunner

    from slimify.cli.app import cli

    (tmp_path / "r.yaml").write_text("epochs: 1\nbatch_size: 128\ncompile: aot_eager\ncalibrate_batches: 1\n")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="sync_bn: a single process"):
        result = CliRunner().invoke(cli, ["finetune", "slimify:digitsnet", "--data", "digits", "--recipe",
                                          str(tmp_path / "r.yaml"), "--switches", "0.5,1.0", "--divisor", "4",
                                          "--sync-bn", "--no-compile", "-o", str(out)])
    assert result.exit_code == 0, result.output
    start = read_log(out / "log.jsonl")[0]
    assert start["event"] == "start" and start["recipe"]["sync_bn"] is True and start["recipe"]["compile"] is False
