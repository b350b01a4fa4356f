"""Interrupted training loses nothing (issue 8): a ``slimify finetune`` process killed with SIGKILL
mid-epoch, resumed, killed again in the middle of writing a checkpoint and resumed once more ends
with exactly the weights of an uninterrupted run with the same seed, and every checkpoint file on
disk is whole and loads at every moment."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from slimify.train.checkpoint import load_checkpoint
from slimify.train.loop import CHECKPOINT_NAME, LOG_NAME
from slimify.train.progress import read_log

REPO = Path(__file__).resolve().parent.parent
# 1437 digits / 128 = 11 steps per epoch, 22 in all; a checkpoint every 2 steps and at epoch ends
RECIPE = ("epochs: 2\nbatch_size: 128\nlr: 0.05\nworkers: 0\ncheckpoint_every: 2\nlog_every: 1\n"
          "calibrate_batches: 2\neval_every: 0\nseed: 7\n")
TOTAL_STEPS = 22
# runs the CLI, but SIGKILLs itself inside the N-th checkpoint write: after the data is written to
# the temporary file and before it replaces checkpoint.pt (the worst moment for a crash)
KILL_IN_WRITE = """
import os, signal, sys
from slimify.cli.app import main
calls, real_fsync = [0], os.fsync
def fsync(fd):
    calls[0] += 1
    if calls[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(fd)
os.fsync = fsync
main(sys.argv[2:])
"""


def finetune_args(run: Path, recipe: Path) -> list[str]:
    return ["finetune", "slimify:digitsnet", "--data", "digits", "--switches", "0.5,1", "--recipe", str(recipe),
            "-o", str(run), "--no-progress", "--device", "cpu"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:  # a file, not a pipe: a chatty child can never block on a full pipe
        return subprocess.Popen([sys.executable, "-m", "slimify", *args], cwd=REPO, env=env(),
                                stdout=subprocess.DEVNULL, stderr=err)


def kill_after_first_checkpoint(proc: subprocess.Popen[bytes], run: Path, timeout: float = 400.0) -> None:
    """SIGKILL ``proc`` as soon as its first checkpoint is on disk (it is then mid-epoch)."""
    deadline = time.monotonic() + timeout
    while not (run / CHECKPOINT_NAME).exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def whole_checkpoints(run: Path) -> dict[str, int]:
    """Every checkpoint file in ``run`` that is not a temporary one must load: name → its step."""
    return {p.name: load_checkpoint(p)["step"] for p in run.iterdir()
            if p.suffix == ".pt" and not p.name.startswith(".")}


def temp_files(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


def test_sigkill_mid_epoch_and_mid_write_then_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    ref_run, run = tmp_path / "reference", tmp_path / "interrupted"
    reference = start(finetune_args(ref_run, recipe), tmp_path / "reference.err")  # alongside the others

    victim = start(finetune_args(run, recipe), tmp_path / "victim.err")
    kill_after_first_checkpoint(victim, run)
    first = whole_checkpoints(run)
    assert list(first) == [CHECKPOINT_NAME] and 2 <= first[CHECKPOINT_NAME] < TOTAL_STEPS // 2  # mid-epoch 1
    assert not (run / "model.slim").exists()

    resumed = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, "2", *finetune_args(run, recipe), "--resume"],
                             cwd=REPO, env=env(), capture_output=True, timeout=600)
    assert resumed.returncode == -signal.SIGKILL, resumed.stderr.decode()
    assert len(temp_files(run)) == 1, "the kill did not land inside a checkpoint write"
    second = whole_checkpoints(run)  # the half-finished write never touched checkpoint.pt
    assert second[CHECKPOINT_NAME] > first[CHECKPOINT_NAME] and second[CHECKPOINT_NAME] < TOTAL_STEPS
    assert load_checkpoint(run / CHECKPOINT_NAME)["batch"] > 0 or second[CHECKPOINT_NAME] == TOTAL_STEPS // 2

    final = subprocess.run([sys.executable, "-m", "slimify", *finetune_args(run, recipe), "--resume"], cwd=REPO,
                           env=env(), capture_output=True, timeout=600)
    assert final.returncode == 0, final.stderr.decode()
    assert reference.wait(timeout=600) == 0, (tmp_path / "reference.err").read_text()

    assert temp_files(run) == [] and temp_files(ref_run) == []  # the stale temporary file was cleaned up
    events = read_log(run / LOG_NAME)
    assert [e["step"] for e in events if e["event"] == "resume"] == [first[CHECKPOINT_NAME], second[CHECKPOINT_NAME]]
    got, want = load_checkpoint(run / CHECKPOINT_NAME), load_checkpoint(ref_run / CHECKPOINT_NAME)
    assert got["step"] == want["step"] == TOTAL_STEPS
    assert got["model"].keys() == want["model"].keys()
    for name, tensor in want["model"].items():
        assert torch.allclose(got["model"][name].double(), tensor.double(), rtol=0, atol=1e-6), name
    slim_got, slim_want = load_file(str(run / "model.slim")), load_file(str(ref_run / "model.slim"))
    assert all(torch.equal(slim_got[k], slim_want[k]) for k in slim_want) and slim_got.keys() == slim_want.keys()
