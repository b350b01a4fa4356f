"""CLI output for people (issue 27, item 6): warnings once, as one ``note:`` line without a file
path; nothing from torch's exporters on stdout unless ``--verbose``; switches too narrow for a
group refused naming the smallest usable width; parameter counts in K below a million; a resume
says from where, and rates leave out the first step."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import slimify
from slimify.cli.model import count_text
from slimify.errors import SlimifyError
from slimify.store.sources import TinyNet
from slimify.store.trust import trusted
from slimify.train import digits
from slimify.train.progress import LossMeter
from slimify.train.run import finetune
from slimify.train.testing import slim_digitsnet
from tests.test_cli import run  # main(args) → (exit code, stdout, stderr)
from tests.test_configs import digitsnet

pytestmark = pytest.mark.usefixtures("one_thread")


class PoolNet(nn.Module):
    """A CNN whose adaptive pooling to 3x3 of an 8x8 map has no ONNX form (3 is no factor of 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(3), nn.Linear(16 * 9, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.bn(self.conv(x)).relu()).flatten(1))


def test_warnings_are_one_note_each_without_paths(tmp_path: Path, capsys) -> None:
    slimify.save(digitsnet(), tmp_path / "m.slim")
    code, out, err = run(["eval", tmp_path / "m.slim", "--data", "digits", "--widths", "0.3,0.6,0.3"], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line]
    assert len(notes) == 2 and all(line.startswith("note: width configuration 0.") for line in notes), err
    assert "UserWarning" not in err and ".py" not in err and "note:" not in out


def test_exporter_output_only_with_verbose(tmp_path: Path, capfd) -> None:
    """At the file descriptors: TorchScript's exporter prints from C++ too."""
    torch.manual_seed(0)
    with trusted("tests"):
        slimify.save(slimify.convert(PoolNet(), example_input=torch.randn(1, 3, 16, 16)), tmp_path / "p.slim")
    args = ["export", tmp_path / "p.slim", "--width", "0.5", "-o", tmp_path / "p.onnx"]
    code, out, err = run(["--trust-source", "tests", *args], capfd)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "adaptive_avg_pool2d" in err
    code, out, err = run(["--trust-source", "tests", "--verbose", *args], capfd)
    assert code == 2 and "graph(" in out + err  # the exporter's IR dump, shown when asked for


def test_switches_that_would_empty_a_group_are_refused(capsys, tmp_path: Path) -> None:
    with pytest.raises(SlimifyError, match=r"switch 0.001 is too narrow for TinyNet: its widest slimmable group of "
                                           r"(\d+) channels would keep .* the smallest usable width is 0.0"):
        slimify.convert(TinyNet(), switches=(0.001, 1.0), example_input=torch.randn(1, 3, 32, 32))
    code, _, err = run(["convert", "slimify:tinynet", "--switches", "0.001,1", "-o", tmp_path / "t.slim"], capsys)
    smallest = float(err.rsplit(" ", 1)[-1])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "smallest usable width" in err
    code, _, err = run(["convert", "slimify:tinynet", "--switches", f"{smallest},1", "-o", tmp_path / "t.slim"],
                       capsys)
    assert code == 0, err


@pytest.mark.parametrize("n, text", [(0, "0"), (999, "999"), (1000, "1.0 K"), (13_540, "13.5 K"),
                                     (999_400, "999.4 K"), (999_600, "1.00 M"), (11_689_512, "11.69 M")])
def test_parameter_counts_read_in_k_below_a_million(n: int, text: str) -> None:
    assert count_text(n) == text


def test_convert_prints_small_models_in_k(tmp_path: Path, capsys) -> None:
    code, out, err = run(["convert", "slimify:tinynet", "--input-size", "32", "-o", tmp_path / "t.slim"], capsys)
    line = next(line for line in out.splitlines() if line.startswith("parameters per switch"))
    assert code == 0 and " K" in line and "0.00 M" not in line, out


def test_a_resume_says_from_where(tmp_path: Path) -> None:
    train = torch.utils.data.Subset(digits("train"), range(128))
    options = dict(epochs=2, batch_size=32, workers=0, calibrate_batches=0, progress=False, out_dir=tmp_path)
    finetune(slim_digitsnet((0.5, 1.0)), train, "demo", stop_after=5, **options)
    lines: list[str] = []
    finetune(slim_digitsnet((0.5, 1.0)), train, "demo", resume=True, echo=lines.append, **options)
    assert lines[0] == f"resumed from step 5 of 8, epoch 2 of 2 ({tmp_path / 'checkpoint.pt'})"


def test_rates_leave_out_the_first_step(monkeypatch) -> None:
    import slimify.train.progress as progress

    clock = iter([0.0, 5.0, 7.0])  # start; the end of a slow first step (loader start, resume); 2 s later
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    meter = LossMeter()
    for _ in range(3):
        meter.update({1.0: 0.5}, 32)
    assert meter.throughput() == pytest.approx(32.0)  # 64 images in 2 s, not 96 in 7 s


class SizeChecked(nn.Module):
    """Checks its input size as timm's patch embeddings do, with the size formatted into the message."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        torch._assert(height == 32, f"Input height ({height}) doesn't match model (32).")
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_an_error_names_the_value_not_a_proxy() -> None:
    with pytest.raises(SlimifyError, match=r"Input height \(16\) doesn't match model \(32\)") as e:
        slimify.convert(SizeChecked(), example_input=torch.randn(1, 3, 16, 16))
    assert "Proxy" not in str(e.value)
