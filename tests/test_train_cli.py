"""CLI: help texts with examples, bad input as one line + exit 2, tiny finetune / eval / demo runs."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from slimify.cli.app import cli, main
from slimify.cli.train import calibrate_command, demo_command, eval_command, finetune_command


@pytest.mark.parametrize("name", ["finetune", "calibrate", "eval", "demo"])
def test_help_has_an_example(name) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0 and "Example" in result.output and f"slimify {name}" in result.output


def test_commands_are_registered_under_their_names() -> None:
    assert [c.name for c in (finetune_command, calibrate_command, eval_command, demo_command)] == \
        ["finetune", "calibrate", "eval", "demo"]


@pytest.mark.parametrize("args, message", [
    (["finetune", "slimify:digitsnet", "--data", "digits", "--recipe", "nope"], "neither a file nor a shipped"),
    (["finetune", "slimify:digitsnet", "--data", "digits", "--switches", "0,a"], "--switches"),
    (["finetune", "slimify:digitsnet", "--data", "/no/such/dir"], "does not exist"),
    (["eval", "no-such-model-xyz", "--data", "digits"], "no-such-model-xyz"),
    (["demo", "--switches", "0.25,0.5"], "must include 1.0"),
    (["demo", "--epochs", "0"], "--epochs"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.startswith("error:") and "Traceback" not in err


def test_bad_recipe_key_is_reported(tmp_path, capsys) -> None:
    (tmp_path / "r.yaml").write_text("epochs: 1\nlearning_rate: 0.1\n")
    with pytest.raises(SystemExit) as e:
        main(["finetune", "slimify:digitsnet", "--data", "digits", "--recipe", str(tmp_path / "r.yaml")])
    assert e.value.code == 2 and "unknown key 'learning_rate'" in capsys.readouterr().err


def test_finetune_then_eval_and_calibrate(tmp_path) -> None:
    runner, out = CliRunner(), tmp_path / "run"
    result = runner.invoke(cli, ["finetune", "slimify:digitsnet", "--data", "digits", "--recipe", "demo",
                                 "--epochs", "1", "--switches", "0.5,1.0", "--divisor", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "starts from random weights (neither --pretrained nor --checkpoint)" in result.output
    assert (out / "checkpoint.pt").is_file() and (out / "log.jsonl").is_file()
    saved = next(p for p in out.iterdir() if p.name.startswith("model."))
    evaluated = runner.invoke(cli, ["eval", str(saved), "--data", "digits", "--json", str(tmp_path / "m.json")])
    assert evaluated.exit_code == 0, evaluated.output
    rows = json.loads((tmp_path / "m.json").read_text())
    assert [r["width"] for r in rows] == [1.0, 0.5] and all(r["top1"] > 20 for r in rows)
    calibrated = runner.invoke(cli, ["calibrate", str(out / "checkpoint.pt"), "--data", "digits", "--batches", "2",
                                     "-o", str(tmp_path / "cal.pt")])
    assert calibrated.exit_code == 0, calibrated.output
    assert (tmp_path / "cal.pt").is_file()


def test_demo_runs_and_reuses_its_pretrained_cache(tmp_path) -> None:
    runner, out = CliRunner(), tmp_path / "demo"
    args = ["demo", "--epochs", "1", "--pretrain-epochs", "1", "--switches", "0.5,1.0", "-o", str(out)]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0, first.output
    assert "training a plain DigitsNet" in first.output and "fine-tuned" in first.output
    results = json.loads((out / "results.json").read_text())
    assert [r["width"] for r in results["finetuned"]] == [1.0, 0.5]
    assert (out / "run" / "checkpoint.pt").is_file() and (out / "pretrained.safetensors").is_file()
    second = runner.invoke(cli, args)
    assert second.exit_code == 0 and "loaded the plain pretrained model" in second.output
