"""``python -m benchmarks.gpu``: on a machine without CUDA it says so in one line and exits with status 2; its code
paths run on the CPU (``--cpu-smoke``, a check of the script, not a measurement)."""
from __future__ import annotations

import pytest
import torch

from benchmarks import gpu
from benchmarks.results import RESULTS


def test_without_cuda_it_says_so_and_writes_nothing(capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    before = RESULTS.read_text()
    with pytest.raises(SystemExit) as e:
        gpu.main([])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no CUDA device on this machine" in err and len(err.strip().splitlines()) == 1
    assert RESULTS.read_text() == before


@pytest.mark.usefixtures("one_thread")
def test_cpu_smoke_runs_every_code_path(capsys) -> None:
    assert gpu.main(["--cpu-smoke", "--models", "slimify:tinynet", "--batch", "2", "--runs", "1", "--warmup", "0",
                     "--image-size", "32", "--batches", "1,3"]) == 0
    out = capsys.readouterr().out
    assert "train step, eager" in out and out.count("forward w=") == 2 * len(gpu.SWITCHES)
    assert out.count("batch 3, eager") == len(gpu.SWITCHES) and out.count("slimify.export") == len(gpu.SWITCHES)


@pytest.mark.parametrize("batches", ["1,x", "0", ""])
def test_bad_batch_sizes_are_one_line(batches: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        gpu.main(["--cpu-smoke", "--models", "slimify:tinynet", "--batches", batches])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--batches" in err and len(err.strip().splitlines()) == 1
