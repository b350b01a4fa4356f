"""The batch dimension of exports (issue 17): .pt2 dynamic like .onnx, --batch-size for a static
one, the message names the dynamic dimensions, and a model that bakes its batch size falls back
to a static batch with a note instead of a wall of exporter output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

import slimify
from slimify.cli.app import main
from slimify.deploy.extract import export_onnx, export_pt2
from slimify.store.sources import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet(num_classes=5)
    return slimify.convert(model, example_input=torch.randn(1, 3, 32, 32)).eval()


class BatchOne(nn.Module):
    """Flattens with a hard-coded batch of 1: no dynamic batch is possible."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).reshape(1, -1))


def test_pt2_has_a_dynamic_batch(tiny: nn.Module, tmp_path: Path) -> None:
    path, note = export_pt2(tiny, 0.5, tmp_path / "m.pt2")
    assert note == "dynamic: batch (dim 0 of the input)"
    net = torch.export.load(str(path)).module()
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with slimify.width(tiny, 0.5), torch.no_grad():
            assert torch.allclose(net(x), tiny(x), atol=1e-5)


def test_pt2_static_batch_when_asked(tiny: nn.Module, tmp_path: Path) -> None:
    path, note = export_pt2(tiny, 1.0, tmp_path / "m.pt2", batch_size=4)
    assert note == "static batch 4, no dynamic dimensions"
    net = torch.export.load(str(path)).module()
    assert net(torch.randn(4, 3, 32, 32)).shape == (4, 5)
    with pytest.raises(AssertionError):  # the program guards its static batch
        net(torch.randn(2, 3, 32, 32))


def test_baked_batch_falls_back_to_static_quietly(tmp_path: Path, capfd) -> None:
    model = BatchOne().eval()
    x = torch.randn(1, 3, 8, 8)
    _, note = export_pt2(model, 1.0, tmp_path / "m.pt2", x)
    assert note.startswith("static batch 1: a dynamic batch is impossible for this model (")
    _, note = export_onnx(model, 1.0, tmp_path / "m.onnx", x)
    assert note.startswith("static batch 1: a dynamic batch is impossible for this model (")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 8, 8]
    got = session.run(None, {"input": x.numpy()})[0]
    assert np.allclose(got, model(x).detach().numpy(), atol=1e-5)
    assert capfd.readouterr().err == ""  # no exporter output on the terminal


def test_cli_says_which_dims_are_dynamic(tiny: nn.Module, tmp_path: Path, capsys) -> None:
    slim = tmp_path / "tiny.slim"
    slimify.save(tiny, slim)
    for args, expected in (([], "dynamic: batch"), (["--batch-size", "2"], "static batch 2")):
        for suffix in (".pt2", ".onnx"):
            with pytest.raises(SystemExit) as e:
                main(["export", str(slim), "--width", "0.5", "-o", str(tmp_path / f"m{len(args)}{suffix}"), *args])
            out = capsys.readouterr().out
            assert e.value.code == 0 and expected in out, out


def test_batch_size_only_for_formats_with_a_batch(tiny: nn.Module, tmp_path: Path, capsys) -> None:
    """--batch-size goes through the format registry: a .pt file (a pickled module) has no batch
    dimension to fix, so asking for one is refused with one line, and nothing is written."""
    slim = tmp_path / "tiny.slim"
    slimify.save(tiny, slim)
    with pytest.raises(SystemExit) as e:
        main(["export", str(slim), "--width", "0.5", "-o", str(tmp_path / "m.pt"), "--batch-size", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.strip() == "error: a static batch size applies to .pt2, .onnx files, not .pt"
    assert not (tmp_path / "m.pt").exists()
