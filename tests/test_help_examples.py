"""Every example in a ``--help`` text is checked (issue 27, item 8): each one parses (its command,
options, their types and callbacks) against real files of the names it uses, made in a temporary
folder; those that run in seconds — on tiny ``.slim`` files, the digits data and ``slimify:`` models —
are run (with fewer timed runs and held-out batches), and must succeed and write what they name."""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import click
import pytest
import torch

import slimify
from slimify.cli.app import COMMANDS, cli, load_command_files
from slimify.rewrite.config_names import store_config
from slimify.store.digits_net import DigitsNet
from tests.test_cli import run  # main(args) → (exit code, stdout, stderr)
from tests.test_configs import digitsnet

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = (".pth", ".pt", ".safetensors")
SHORTER = {"profile": ("--runs", "2", "--warmup", "0"), "pick": ("--runs", "2", "--warmup", "0"),
           "search": ("--batches", "1", "--batch-size", "32")}  # appended (the last value counts): seconds, not a minute
OUTPUTS = ("-o", "--output", "--out", "--json", "--csv", "--plot")  # options naming a file or folder to write
HEAVY = ("~", "cuda", "demo", "finetune")  # ImageNet paths, a GPU, minutes of training: parsed, not run


def _examples() -> list[tuple[str, list[str]]]:
    """(the line as written, its arguments after ``slimify``) of every help text's examples."""
    load_command_files()
    out = []
    for text in [cli.epilog or ""] + [e.fn.epilog or "" for e in sorted(COMMANDS, key=lambda e: e.name)]:
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split(" # ")[0].split("   (")[0], comments=True)
            if "slimify" in words:  # also torchrun … -m slimify finetune …
                out.append((line.strip(), words[words.index("slimify") + 1:]))
    return out


EXAMPLES = _examples()


def _inputs(args: list[str]) -> list[str]:
    """The files an example reads: .slim files, weights and accuracy files that are no option's output."""
    written = {i + 1 for i, a in enumerate(args) if a in OUTPUTS}  # positions of output names
    return [a for i, a in enumerate(args) if i not in written and i and
            (args[i - 1] == "--accuracy" or a.endswith(".slim") or a.endswith(WEIGHTS))]


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    """A folder with tiny real files to stand for the examples' inputs (see :func:`_provide`)."""
    model = digitsnet()
    store_config(model, "search-flops-0.30x", 0.3)
    (tmp_path / "_tiny").mkdir()
    slimify.save(model, tmp_path / "_tiny" / "m.slim")
    torch.manual_seed(0)
    torch.save(DigitsNet().state_dict(), tmp_path / "_tiny" / "digitsnet.pt")
    (tmp_path / "_tiny" / "acc.json").write_text('{"0.25": 50, "0.5": 60, "0.75": 70, "1.0": 80, '
                                                 '"search-flops-0.30x": 55}')
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _provide(folder: Path, args: list[str]) -> None:
    """Put a tiny real file under every input name of one example."""
    for name in _inputs(args):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tiny = "m.slim" if name.endswith(".slim") else "acc.json" if name.endswith(".json") else "digitsnet.pt"
        shutil.copy(folder / "_tiny" / tiny, path)


def _rest(group: click.Context) -> list[str]:
    """The command line after the group's options: the command's name and its arguments (click 8.2+
    keeps the name apart until it resolves the command; ``protected_args`` is deprecated)."""
    return [*getattr(group, "_protected_args", []), *group.args]


def test_every_command_has_examples() -> None:
    named = {args[0] if not args[0].startswith("-") else args[2] for _, args in EXAMPLES}
    assert set(COMMANDS.names()) <= named, set(COMMANDS.names()) - named


def check_command(line: str, args: list[str], folder: Path, capsys, fails: bool = False, heavy: bool = False) -> bool:
    """Parse one command line (after ``slimify``) on tiny stand-ins of its inputs in ``folder``; run
    it unless ``heavy`` or it takes more than seconds (``fails``: it must exit with an error). True
    when it ran."""
    _provide(folder, args)
    with cli.make_context("slimify", list(args), resilient_parsing=False) as group:
        name, command, rest = cli.resolve_command(group, _rest(group))
        command.make_context(name, rest, parent=group)  # options, types, callbacks: raises on any error
    models = [a for a in args[args.index(name) + 1:] if not a.startswith("-")][:1]
    if heavy or any(h in a for a in args for h in HEAVY) or name == "finetune" or \
            (models and not models[0].endswith(".slim") and not models[0].startswith("slimify:")):
        return False  # parsed: running it needs ImageNet, a GPU, minutes or a model download
    code, out, err = run([*args, *SHORTER.get(name, ())], capsys)
    if fails:
        assert code != 0, f"{line}: meant to fail, but succeeded"
        return True
    assert code == 0, f"{line}\n{err}"
    for i, a in enumerate(args[:-1]):
        if a in OUTPUTS and a != "--out":
            assert (folder / args[i + 1]).is_file(), f"{line}: no {args[i + 1]}"
    return True


@pytest.mark.parametrize("line, args", EXAMPLES, ids=[line for line, _ in EXAMPLES])
def test_help_example(line: str, args: list[str], folder: Path, capsys) -> None:
    check_command(line, args, folder, capsys)


def test_a_wrong_example_would_fail(folder: Path) -> None:
    with pytest.raises(click.UsageError):
        with cli.make_context("slimify", ["export", "rn50.slim", "--widht", "0.5"]) as group:
            name, command, rest = cli.resolve_command(group, _rest(group))
            command.make_context(name, rest, parent=group)


def test_the_onnxruntime_snippet_of_deploy_md_runs(folder: Path, capsys) -> None:
    """docs/deploy.md's all-widths snippet, on a tiny file: every width runs, 0.3 is refused by name."""
    from slimify.deploy.formats import write_all_widths

    text = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    snippet = next(block.split("```", 1)[0] for block in text.split("```python\n")[1:]
                   if block.startswith("import numpy as np, onnxruntime as ort"))
    write_all_widths(slimify.load(folder / "_tiny" / "m.slim"), folder / "all.onnx")
    assert "rn50_all.onnx" in snippet and "(1, 3, 224, 224)" in snippet
    exec(snippet.replace("rn50_all.onnx", str(folder / "all.onnx")).replace("(1, 3, 224, 224)", "(1, 3, 32, 32)"), {})
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[:4]] == ["1.0", "0.25", "0.75", "0.5"]
    assert "width is not a switch" in printed[-1]
