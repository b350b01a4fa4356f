"""Own models of several inputs (issue 27): a two-input model and one with a keyword input,
converted in Python and saved, go through every CLI command that takes a ``.slim`` (with
``--trust-source``) and every export path in the form recorded in the file; ``to_onnx`` and
``to_torch_export`` take a tuple example; the data commands refuse them with one line."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import slimify
from slimify.analysis.example_inputs import ExampleCall
from slimify.deploy.extract import to_onnx, to_torch_export
from slimify.errors import SlimifyWarning
from slimify.store.trust import trusted
from tests.test_cli import run  # main(args) → (exit code, stdout, stderr)

pytestmark = pytest.mark.usefixtures("one_thread")


class TwoInput(nn.Module):
    """An image and a vector of metadata per image, joined before the classifier."""

    def __init__(self, width: int = 16, meta: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
                                      nn.ReLU())
        self.side = nn.Linear(meta, 2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, img: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(img).mean(dim=(2, 3)) + self.side(meta))


class KeywordInput(TwoInput):
    """The same with the metadata as a keyword input."""

    def forward(self, img: torch.Tensor, *, meta: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(img, meta)


IMG, META = torch.randn(1, 3, 16, 16), torch.randn(1, 4)
TRUST = ["--trust-source", "tests"]


def _converted(cls: type = TwoInput) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    if cls is KeywordInput:
        return slimify.convert(model, example_input=IMG, example_kwargs={"meta": META})
    return slimify.convert(model, example_input=(IMG, META))


@pytest.fixture(scope="module", params=[TwoInput, KeywordInput], ids=["positional", "keyword"])
def slim(request, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("several") / f"{request.param.__name__}.slim"
    with trusted("tests"), warnings.catch_warnings():
        warnings.simplefilter("error", SlimifyWarning)  # rebuildable: the class is in a trusted package
        slimify.save(_converted(request.param), path)
    return path


def _call(model: nn.Module, batch: int) -> ExampleCall:
    img, meta = IMG.expand(batch, -1, -1, -1) * 0.5, META.expand(batch, -1) - 1
    return ExampleCall((img,), {"meta": meta}) if isinstance(model, KeywordInput) else ExampleCall((img, meta))


def test_export_paths_take_the_recorded_form(slim: Path, tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    with trusted("tests"):
        model = slimify.load(slim)
    call = _call(model, 3)
    with slimify.width(model, 0.5), torch.no_grad():
        want = call.run(model)
    to_onnx(model, 0.5, tmp_path / "m.onnx")  # the form recorded in the .slim
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["img", "meta"]
    got = session.run(None, {"img": call.tensors()[0].numpy(), "meta": call.tensors()[1].numpy()})[0]
    assert np.abs(got - want.numpy()).max() <= 1e-4 * want.abs().max().item()
    example = (IMG, META) if isinstance(model, TwoInput) and not isinstance(model, KeywordInput) else \
        ExampleCall((IMG,), {"meta": META})
    to_torch_export(model, 0.5, tmp_path / "m.pt2", example=example)  # a tuple example, or keywords
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    assert torch.allclose(call.run(program), want, atol=1e-5)  # dynamic batch: 3, captured at 2
    to_onnx(model, 0.5, tmp_path / "t.onnx", example=example)


def test_every_cli_command_with_several_inputs(slim: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run([*TRUST, "inspect", slim], capsys)
    assert code == 0 and "slimmable" in out, err
    code, out, err = run([*TRUST, "profile", slim, "--runs", "2", "--warmup", "0", "--batch-size", "2"], capsys)
    assert code == 0 and "[2, 3, 16, 16], " in out and "0.25" in out, err
    code, out, err = run([*TRUST, "profile", slim, "--runs", "2", "--input-size", "24"], capsys)
    assert code == 0 and "[1, 3, 24, 24], " in out, err
    code, out, err = run([*TRUST, "pick", slim, "--params", "1M", "-o", tmp_path / "p.onnx"], capsys)
    assert code == 0 and "picked width 1" in out and (tmp_path / "p.onnx").is_file(), err
    for suffix in (".pt", ".pt2", ".onnx"):
        code, out, err = run([*TRUST, "export", slim, "--width", "0.5", "-o", tmp_path / f"m{suffix}"], capsys)
        assert code == 0 and (tmp_path / f"m{suffix}").is_file(), err
    assert "dynamic: batch (dim 0 of the inputs" in out
    for suffix in (".onnx", ".pt2"):
        code, out, err = run([*TRUST, "export", slim, "--all-widths", "-o", tmp_path / f"all{suffix}"], capsys)
        assert code == 0 and (tmp_path / f"all{suffix}").is_file(), err
    assert "'meta' [1, 4]" in run([*TRUST, "export", slim, "--all-widths", "--force", "-o", tmp_path / "all.onnx"],
                                  capsys)[1]


def test_all_widths_files_run_every_switch_with_several_inputs(slim: Path, tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    from slimify.deploy.formats import write_all_widths

    with trusted("tests"):
        model = slimify.load(slim)
    write_all_widths(model, tmp_path / "all.onnx")
    write_all_widths(model, tmp_path / "all.pt2")
    session = ort.InferenceSession(str(tmp_path / "all.onnx"), providers=["CPUExecutionProvider"])
    program = torch.export.load(str(tmp_path / "all.pt2")).module()
    call = _call(model, 5)
    feed = {"img": call.tensors()[0].numpy(), "meta": call.tensors()[1].numpy()}
    for w in slimify.switches(model):
        with slimify.width(model, w), torch.no_grad():
            want = call.run(model)
        got = session.run(None, {**feed, "width": np.array(w, dtype=np.float32)})[0]
        assert np.abs(got - want.numpy()).max() <= 1e-4 * want.abs().max().item()
        assert torch.allclose(program(*call.tensors(), torch.tensor(w)), want, atol=1e-5)


@pytest.mark.parametrize("command", [
    ["eval", "--data", "digits"],
    ["calibrate", "--data", "digits", "--batches", "1", "-o", "{tmp}/c.slim"],
    ["finetune", "--data", "digits", "--epochs", "1", "-o", "{tmp}/run"],
    ["search", "--data", "digits", "--flops", "0.5x", "-o", "{tmp}/s.slim"],
])
def test_data_commands_refuse_several_inputs_in_one_line(slim: Path, tmp_path: Path, capsys, command) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    code, out, err = run([*TRUST, args[0], slim, *args[1:]], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "takes several inputs ([1, 3, 16, 16], " in err and f"{args[0]} feeds it one image batch" in err


def test_trust_source_imports_from_the_current_directory(tmp_path: Path, capsys, monkeypatch) -> None:
    """As ``python -m`` would: the folder the command runs in holds the user's package."""
    import sys

    package = tmp_path / "own_models_27"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("import torch.nn as nn\n\n\nclass Net(nn.Module):\n"
                                     "    def __init__(self):\n        super().__init__()\n"
                                     "        self.conv, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)\n"
                                     "        self.fc = nn.Linear(8, 10)\n\n"
                                     "    def forward(self, x):\n        return self.fc(self.bn(self.conv(x)).mean((2, 3)))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    code, out, err = run(["--trust-source", "own_models_27", "convert", "own_models_27.nets:Net", "--input-size", "16",
                          "-o", "n.slim"], capsys)
    assert code == 0 and (tmp_path / "n.slim").is_file(), err
    assert sys.path == before  # the current directory was searched for the import only
    code, out, err = run(["--trust-source", "own_models_27", "inspect", "n.slim"], capsys)
    assert code == 0 and "Net" in out, err
    monkeypatch.delitem(sys.modules, "own_models_27.nets")
    code, _, err = run(["inspect", "n.slim"], capsys)  # not trusted: never imported, from here or anywhere
    assert code == 2 and "--trust-source own_models_27" in err and "own_models_27.nets" not in sys.modules


@pytest.mark.parametrize("command", [["convert", "-o", "{tmp}/m.slim"], ["inspect"], ["reorder", "-o", "{tmp}/m.pt"]])
@pytest.mark.parametrize("cls", ["TwoInput", "KeywordInput"])
def test_commands_of_a_model_name_refuse_several_inputs_in_one_line(cls: str, command, tmp_path: Path,
                                                                     capsys) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    code, _, err = run([*TRUST, args[0], f"tests.test_several_inputs:{cls}", "--input-size", "16", *args[1:]], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{cls}.forward takes 2 inputs (img, meta)" in err and "give the .slim file" in err
