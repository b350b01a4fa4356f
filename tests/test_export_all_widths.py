"""One file for every width (issue 17): ONNX with a ``width`` input and one torch.export program,
weights stored once, each width equal to the slimmable model; unknown widths and models whose
switches cannot share one graph fail clearly, leaving no file behind."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import slimify
import slimify.deploy.export_all_widths as aw
from slimify.cli.app import cli, main
from slimify.deploy.export_all_widths import to_onnx_all_widths, unknown_width_node
from slimify.deploy.extract import to_onnx
from slimify.errors import SlimifyError
from slimify.store.sources import TinyNet

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(width: int = 32) -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet(num_classes=5, width=width)
    for m in model.modules():  # statistics that differ per channel, so a wrong BN slot shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    slimify.convert(model, example_input=torch.randn(1, 3, 32, 32))
    for m in model.modules():  # private BN statistics of each switch differ from the full ones
        if type(m).__name__ == "SwitchBatchNorm":
            m.running_mean.uniform_(-0.5, 0.5)
    return model.eval()


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_onnx_all_widths_equals_every_switch(tmp_path: Path) -> None:
    model = _tiny()
    info = to_onnx_all_widths(model, tmp_path / "all.onnx")
    session = _session(tmp_path / "all.onnx")
    assert [i.name for i in session.get_inputs()] == ["input", "width"]
    assert session.get_inputs()[1].shape == [] and [o.name for o in session.get_outputs()] == ["output"]
    x = torch.randn(3, 3, 32, 32)  # another batch size than the export's example
    outputs = []
    for w in slimify.switches(model):
        got = session.run(None, {"input": x.numpy(), "width": np.array(w, dtype=np.float32)})[0]
        with slimify.width(model, w), torch.no_grad():
            want = model(x).numpy()
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
        outputs.append(got)
    assert not np.allclose(outputs[0], outputs[-1])  # the width input really switches
    assert info.max_diff is not None and info.max_diff <= 1e-4


def test_onnx_all_widths_stores_every_tensor_once(tmp_path: Path) -> None:
    model = _tiny(width=96)  # 0.2 M parameters: the four graphs (≈ 30 kB) are small beside the weights
    to_onnx_all_widths(model, tmp_path / "all.onnx")
    to_onnx(model, 1.0, tmp_path / "full.onnx")
    proto = onnx.load(str(tmp_path / "all.onnx"))
    stored = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1]
    assert len({t.name for t in stored}) == len(stored)
    full_weights = sum(p.numel() * 4 for n, p in model.state_dict().items() if p.dim() > 1)
    assert sum(onnx.numpy_helper.to_array(t).nbytes for t in stored) == full_weights
    assert (tmp_path / "all.onnx").stat().st_size <= 1.25 * (tmp_path / "full.onnx").stat().st_size


def test_unknown_width_fails_at_run_time_with_a_clear_message(tmp_path: Path) -> None:
    model = _tiny()
    to_onnx_all_widths(model, tmp_path / "all.onnx", check=False)
    session = _session(tmp_path / "all.onnx")
    x = np.zeros((1, 3, 32, 32), dtype=np.float32)
    for bad in (0.3, 2.0, 0.0):
        with pytest.raises(Exception, match="width is not a switch of this model; use one of 0.25, 0.5, 0.75, 1"):
            session.run(None, {"input": x, "width": np.array(bad, dtype=np.float32)})
    assert unknown_width_node((0.25, 1.0)).endswith("use one of 0.25, 1")


def test_switches_that_cannot_share_one_graph_fail_and_write_nothing(tmp_path: Path, monkeypatch) -> None:
    model = _tiny()
    real_export = aw.export

    def odd_export(m: nn.Module, w: float) -> nn.Module:  # width 0.5 returns 7 values per sample, the rest 5
        plain = real_export(m, w)
        return nn.Sequential(plain, nn.Linear(5, 7)) if w == 0.5 else plain

    monkeypatch.setattr(aw, "export", odd_export)
    with pytest.raises(SlimifyError, match=r"cannot share one graph: width 0.25 returns \[5\].*width 0.5 returns \[7\]"):
        to_onnx_all_widths(model, tmp_path / "all.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # torch.export of four branches: ~20 s
def test_torch_export_all_widths_one_program(tmp_path: Path) -> None:
    from slimify.deploy.export_all_widths_pt2 import to_torch_export_all_widths

    model = _tiny()
    line = to_torch_export_all_widths(model, tmp_path / "all.pt2", torch.randn(1, 3, 32, 32))
    assert "dynamic batch" in line
    program = torch.export.load(str(tmp_path / "all.pt2"))
    stored = sum(t.numel() * t.element_size() for t in program.state_dict.values())
    assert stored == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    net = program.module()
    x = torch.randn(4, 3, 32, 32)
    for w in slimify.switches(model):
        with slimify.width(model, w), torch.no_grad():
            assert torch.allclose(net(x, torch.tensor(w)), model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="width is not a switch of this model"):
        net(x, torch.tensor(0.6))


def test_cli_all_widths(tmp_path: Path, capsys) -> None:
    slim = tmp_path / "tiny.slim"
    slimify.save(_tiny(), slim)
    out = tmp_path / "all.onnx"
    result = CliRunner().invoke(cli, ["export", str(slim), "--all-widths", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0 and "widths 0.25, 0.5, 0.75, 1 in one ONNX file" in result.output
    assert [i.name for i in _session(out).get_inputs()] == ["input", "width"]
    for args, message in ((["--all-widths", "--width", "0.5"], "either --width W"), ([], "either --width W"),
                          (["--all-widths", "-o", str(tmp_path / "m.pt")], "must end with .onnx or .pt2")):
        args = args if "-o" in args else [*args, "-o", str(tmp_path / "x.onnx")]
        with pytest.raises(SystemExit) as e:
            main(["export", str(slim), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_feature_model_with_padded_output(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()  # features, padded per switch
    slimify.convert(model, example_input=torch.randn(1, 3, 32, 32))
    info = to_onnx_all_widths(model, tmp_path / "features.onnx")  # checks every width against the model
    assert info.max_diff is not None
    session = _session(tmp_path / "features.onnx")
    got = session.run(None, {"input": np.zeros((2, 3, 32, 32), np.float32), "width": np.array(0.25, np.float32)})[0]
    assert got.shape == (2, 512)
