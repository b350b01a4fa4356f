"""Small rough edges of issue 17 (item 5): closest model names, a lost full width, H×W input
sizes, foreign files where a .slim is expected, the inspect table, reorder ties, random-init
notes and the demo's output."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import slimify
from slimify.analysis.report import ConversionReport, GroupInfo
from slimify.errors import SlimifyError
from slimify.store.sources import create
from tests.test_cli import run  # main(args) → (exit code, stdout, stderr)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_unknown_model_suggests_the_closest_names() -> None:
    with pytest.raises(SlimifyError) as e:
        create("resnet5o")
    assert str(e.value) == "cannot build model 'resnet5o': Unknown model (resnet5o); did you mean resnet50, " \
                           "resnet51q, resnet50t?"
    with pytest.raises(SlimifyError, match=r"did you mean torchvision:resnet50"):
        create("torchvision:resnet5o")
    with pytest.raises(SlimifyError) as e:
        create("zzzzqqq")
    assert "did you mean" not in str(e.value) and "with {}" not in str(e.value)


def test_convert_notes_a_lost_full_width_and_random_weights(tmp_path: Path, capsys) -> None:
    code, out, err = run(["convert", "slimify:tinynet", "--switches", "0.5", "--input-size", "32x32",
                          "-o", tmp_path / "m.slim"], capsys)
    assert code == 0 and "saved" in out
    assert "the original (full) width is no longer available: the widest switch is 0.5" in err
    assert "no --checkpoint, the model is randomly initialised" in err
    assert slimify.store.slimfile.read_config(tmp_path / "m.slim")["conversion"]["example_shape"] == [1, 3, 32, 32]


@pytest.mark.parametrize("value, shape", [("32x48", [1, 3, 32, 48]), ("1x32x32", [1, 1, 32, 32])])
def test_input_size_accepts_h_x_w(value: str, shape: list[int]) -> None:
    from slimify.cli.model import parse_input_size

    assert parse_input_size(None, None, value) == tuple(shape[1:])


def test_foreign_files_say_what_they_are(tmp_path: Path, capsys) -> None:
    model = slimify.convert(create("slimify:tinynet"), example_input=torch.randn(1, 3, 32, 32)).eval()
    from slimify.deploy.extract import to_onnx, to_torch_export

    to_torch_export(model, 0.5, tmp_path / "m.pt2")
    to_onnx(model, 0.5, tmp_path / "m.onnx")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    for name, message in (("m.pt2", "is a torch.export program (.pt2), not a .slim file"),
                          ("m.onnx", "is an ONNX file, not a .slim file"),
                          ("w.pt", "is a torch.save file (.pt), not a .slim file: plain weights go to "
                                   "'slimify convert MODEL --checkpoint FILE'")):
        code, _, err = run(["profile", tmp_path / name], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_inspect_table_aligns_wide_counts_and_marks_truncation() -> None:
    origins = ["a.conv", "b.conv", "c.conv", "d.conv", "e.conv"]
    report = ConversionReport("Net", (0.25, 1.0), 8, [GroupInfo(0, 2048, 1, [512, 2048], False, "", origins),
                                                       GroupInfo(1, 64, 1, [16, 64], True, "fixed because", origins)])
    lines = report.table().splitlines()
    head, row = lines[2], lines[3]
    assert [len(c) for c in head.split("|")] == [len(c) for c in row.split("|")][:-1] + [len(head.split("|")[-1])]
    assert row.endswith("a.conv, b.conv, c.conv, … (2 more)")
    assert "group 1 (64 ch, a.conv, b.conv, … (3 more)): fixed because" in report.table()


def test_reorder_says_when_scores_tie_everywhere(tmp_path: Path, capsys) -> None:
    code, out, err = run(["reorder", "slimify:tinynet", "--method", "bn", "-o", tmp_path / "r.safetensors"], capsys)
    assert code == 0 and "reordered 0 of" in out
    assert "scores tie everywhere" in err and "nothing moved" in err


@pytest.mark.slow  # a one-epoch demo: ~15 s
def test_demo_lists_every_file_and_shows_top1_only(tmp_path: Path, capsys) -> None:
    code, out, err = run(["demo", "--epochs", "1", "--pretrain-epochs", "1", "--switches", "0.5,1.0",
                          "-o", tmp_path / "demo"], capsys)
    assert code == 0, err
    written = sorted(p.relative_to(tmp_path / "demo").as_posix() for p in (tmp_path / "demo").rglob("*") if p.is_file())
    assert f"wrote in {tmp_path / 'demo'}/: {', '.join(written)};" in out
    assert "top-5" not in out
    assert "slimify-demo/" in (Path(__file__).resolve().parent.parent / ".gitignore").read_text()
