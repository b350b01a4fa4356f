"""The deployment CLI (issue 7): convert → inspect → export → profile → pick on a small model,
every --help shows an example, and bad input is one stderr line with exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

import slimify
from slimify.cli.app import cli, main
from slimify.cli.deploy import export_command, pick_command, profile_command
from slimify.cli.model import convert_command, inspect_command
from slimify.deploy.extract import active_params

pytestmark = pytest.mark.usefixtures("one_thread")

COMMANDS = ["convert", "inspect", "export", "profile", "pick"]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.fixture(scope="module")
def slim(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "tiny.slim"
    result = CliRunner().invoke(cli, ["convert", "slimify:tinynet", "--input-size", "32", "--num-classes", "5",
                                      "-o", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_an_example(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0 and "Example" in result.output and f"slimify {name} " in result.output


def test_commands_are_registered_under_their_names() -> None:
    commands = (convert_command, inspect_command, export_command, profile_command, pick_command)
    assert [c.name for c in commands] == COMMANDS
    assert all(name in CliRunner().invoke(cli, ["--help"]).output for name in COMMANDS)


def test_convert_writes_a_loadable_file(slim: Path, capsys) -> None:
    model = slimify.load(slim)
    assert slimify.switches(model) == (0.25, 0.5, 0.75, 1.0) and model.fc.out_features == 5
    code, out, _ = run(["convert", "slimify:tinynet", "--switches", "0.5,1", "--divisor", "4", "--input-size",
                        "3x32x32", "-o", slim.parent / "two.slim"], capsys)
    assert code == 0 and "parameters per switch: 0.5:" in out and "saved" in out
    assert slimify.switches(slimify.load(slim.parent / "two.slim")) == (0.5, 1.0)


def test_convert_loads_a_checkpoint(tmp_path, capsys) -> None:
    from slimify.store.sources import TinyNet

    plain = TinyNet(num_classes=3).eval()
    torch.save(plain.state_dict(), tmp_path / "w.pth")
    code, _, err = run(["convert", "slimify:tinynet", "--num-classes", "3", "--checkpoint", tmp_path / "w.pth",
                        "--input-size", "32", "-o", tmp_path / "m.slim"], capsys)
    assert code == 0, err
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(slimify.load(tmp_path / "m.slim")(x), plain(x), atol=1e-6)


def test_inspect_file_and_name(slim: Path, capsys) -> None:
    code, out, _ = run(["inspect", slim], capsys)
    assert code == 0 and "TinyNet: 3 channel groups" in out and "w=0.25" in out
    assert "fixed groups" in out and "model output" in out and "parameters per switch" in out
    code, out, _ = run(["inspect", "slimify:tinynet", "--input-size", "32", "--switches", "0.5,1", "--json"], capsys)
    report = json.loads(out)
    assert code == 0 and report["switches"] == [0.5, 1.0] and any(g["fixed"] for g in report["groups"])


def test_inspect_feature_model_shows_its_padded_output(capsys) -> None:
    code, out, _ = run(["inspect", "vit_tiny_patch16_224", "--num-classes", "0"], capsys)
    assert code == 0 and "model output: 192 features" in out and "pad the rest with zeros" in out


def test_export_each_format(slim: Path, tmp_path, capsys) -> None:
    model = slimify.load(slim)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), slimify.width(model, 0.5):
        want = model(x)
    for suffix in (".pt", ".pt2", ".onnx"):
        code, out, err = run(["export", slim, "--width", "0.5", "-o", tmp_path / f"m{suffix}"], capsys)
        assert code == 0 and out.startswith(f"wrote {tmp_path / f'm{suffix}'}: width 0.5"), err
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "m.pt", weights_only=False)(x), want, atol=1e-5)
        assert torch.allclose(torch.export.load(str(tmp_path / "m.pt2")).module()(x[:1]), want[:1], atol=1e-5)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert abs(session.run(None, {"input": x.numpy()})[0] - want.numpy()).max() < 1e-4


def test_profile_writes_every_output(slim: Path, tmp_path, capsys) -> None:
    outs = [tmp_path / "p.json", tmp_path / "p.csv", tmp_path / "p.png"]
    code, out, err = run(["profile", slim, "--runs", "2", "--warmup", "0", "--threads", "1", "--batch-size", "2",
                          "--json", outs[0], "--csv", outs[1], "--plot", outs[2]], capsys)
    assert code == 0, err
    assert "input [2, 3, 32, 32]" in out and "1 thread(s)" in out and all(f"wrote {p}" in out for p in outs)
    assert [r["width"] for r in json.loads(outs[0].read_text())["rows"]] == [0.25, 0.5, 0.75, 1.0]
    assert outs[2].read_bytes()[:4] == b"\x89PNG"
    code, _, err = run(["profile", slim, "--runs", "1", "--json", outs[0]], capsys)
    assert code == 2 and "already exists: pass --force" in err


def test_pick_prints_and_exports_the_widest_fit(slim: Path, tmp_path, capsys) -> None:
    model = slimify.load(slim)
    params = [active_params(model, w) for w in (0.25, 0.5, 0.75, 1.0)]
    budget = (params[2] + params[3]) // 2  # between the widths 0.75 and 1.0
    code, out, err = run(["pick", slim, "--params", budget, "--latency-ms", "10000", "--runs", "1", "--warmup", "0",
                          "-o", tmp_path / "best.onnx"], capsys)
    assert code == 0, err
    assert "picked width 0.75" in out and f"{params[2]:,} params" in out and (tmp_path / "best.onnx").is_file()
    code, out, err = run(["pick", slim, "--flops", "1k", "--runs", "1"], capsys)
    assert code == 2 and "no switch fits" in err


@pytest.mark.parametrize("args, message", [
    (["convert", "slimify:tinynet", "-o", "{tmp}/x.pt"], "must end with .slim"),
    (["convert", "slimify:tinynet", "-o", "{slim}"], "already exists: pass --force"),
    (["convert", "slimify:tinynet", "--switches", "0.5,2", "-o", "{tmp}/x.slim"], "--switches"),
    (["convert", "slimify:tinynet", "--input-size", "3x32x32x32", "-o", "{tmp}/x.slim"], "--input-size"),  # HxW (3x32) is valid since issue 17
    (["convert", "os:system", "-o", "{tmp}/x.slim"], "is not allowed"),
    (["convert", "no_such_model_xyz", "-o", "{tmp}/x.slim"], "no_such_model_xyz"),
    (["convert", "slimify:tinynet", "-o", "{tmp}/no/dir/x.slim"], "does not exist"),
    (["inspect", "{tmp}/garbage.slim"], "truncated or not a .slim file"),
    (["export", "{slim}", "--width", "0.1", "-o", "{tmp}/x.onnx"], "outside this model's range"),
    (["export", "{slim}", "--width", "0.5", "-o", "{tmp}/x.tflite"], "must end with .pt or .pt2 or .onnx"),
    (["export", "{tmp}/missing.slim", "--width", "0.5", "-o", "{tmp}/x.pt"], "does not exist"),
    (["pick", "{slim}"], "at least one budget"),
    (["pick", "{slim}", "--flops", "lots"], "--flops"),
    (["profile", "{slim}", "--runs", "0"], "--runs"),
])
def test_bad_input_is_one_line_and_exit_2(slim: Path, tmp_path, capsys, args: list[str], message: str) -> None:
    (tmp_path / "garbage.slim").write_bytes(b"\x00" * 64)
    args = [a.format(tmp=tmp_path, slim=slim) for a in args]
    code, _, err = run(args, capsys)
    assert code == 2 and message in err and err.startswith("error:") and err.count("\n") == 1, err
    assert not (tmp_path / "x.slim").exists() and not (tmp_path / "x.onnx").exists()


def test_entry_point_in_a_fresh_process(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "slimify", "convert", "os:system", "-o", str(tmp_path / "x.slim")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: model source 'os' is not allowed")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "x.slim").exists()
