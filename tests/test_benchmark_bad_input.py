"""Benchmarks given an unknown model, a peer package that is not installed or no device print one
line saying so and exit with status 2 (issue 25), before building or measuring anything."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from benchmarks import all_widths, convert_stages, convert_time_compare, gpu, speed
from benchmarks.results import RESULTS

pytestmark = pytest.mark.usefixtures("one_thread")  # benchmarks set torch's thread count: put the suite's back after


def _refused(capsys: pytest.CaptureFixture[str], run, *words: str) -> None:
    before = RESULTS.read_text()
    with pytest.raises(SystemExit) as e:
        run()
    captured = capsys.readouterr()
    assert e.value.code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), captured.err
    assert captured.out == "" and RESULTS.read_text() == before


@pytest.mark.parametrize("module, argv", [
    (speed, ["--models", "resnet18", "no_such_net_xyz"]),
    (all_widths, ["--models", "torchvision:no_such_net_xyz"]),
    (all_widths, ["--models", "resnet18", "--pt2", "no_such_net_xyz"]),
    (convert_time_compare, ["--peer", "torch-pruning", "--models", "tv:no_such_net_xyz"]),
    (convert_stages, ["--models", "no_such_net_xyz"]),
])
def test_an_unknown_model_is_one_line_and_status_2(module, argv, capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, *argv])
    _refused(capsys, module.main, "no_such_net_xyz")


def test_gpu_benchmark_refuses_an_unknown_model(capsys) -> None:
    _refused(capsys, lambda: gpu.main(["--models", "resnet18,no_such_net_xyz", "--cpu-smoke"]), "no_such_net_xyz")


def test_gpu_benchmark_without_cuda_is_one_line_and_status_2(capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _refused(capsys, lambda: gpu.main([]), "no CUDA device")


def test_a_peer_package_that_is_not_installed_is_one_line_and_status_2(capsys, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch_pruning" else real(name, *a))
    monkeypatch.setattr(sys, "argv", ["convert_time_compare", "--peer", "torch-pruning"])
    _refused(capsys, convert_time_compare.main, "torch-pruning is not installed")
