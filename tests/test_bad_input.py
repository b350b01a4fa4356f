"""Bad input never crashes slimify (issue 8): every case of the tables below, given to the CLI,
exits with code 2 and ONE stderr line saying what is wrong (no traceback), or, given to the API,
raises SlimifyError with a one-line message; no output or temporary file is left behind and no
input file is changed. ``benchmarks/reliability.py`` counts these cases for RESULTS.md."""
from __future__ import annotations

import contextlib
import json
import pickle
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import Subset

import slimify
from slimify.cli.app import main
from slimify.errors import SlimifyError
from slimify.preprocess import DataConfig
from slimify.selection.budget import parse_amount
from slimify.store.digits_net import DigitsNet
from slimify.store.input_size import check_input_size
from slimify.store.sources import TinyNet, create, read_state_dict
from slimify.train import digits, evaluate, finetune, load_recipe, model_transform
from slimify.train.checkpoint import load_checkpoint, save_checkpoint
from tests.slimfiles import rewrite_slim

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent
TINY = ("--input-size", "32")  # convert the 21 k-parameter TinyNet at 32 px: well under a second
DIGITS = ("slimify:digitsnet", "--data", "digits")
STARTED = ("run", "run/log.jsonl")  # a run that failed on its first batch leaves its log, nothing else


@dataclass(frozen=True)
class CliCase:
    """``args`` may name ``{file}`` (a fixture file below), ``{out}`` (this case's output path in an
    empty directory) and ``{ro}`` (a directory nobody may write to)."""

    id: str
    args: tuple[str, ...]
    message: str  # must appear in the error line (case-insensitive)
    out: str = "o.slim"  # name of the output ``{out}`` inside the case's output directory
    existing: bool = False  # ``{out}`` exists beforehand: it must keep its content
    leaves: tuple[str, ...] = ()  # what may be left in the output directory (a started run's log)
    no_cuda: bool = False  # only meaningful where CUDA is absent


def _c(id: str, *args: str, message: str, **kw: Any) -> CliCase:
    return CliCase(id, args, message, **kw)


def _ft(id: str, *args: str, message: str, data: str = "digits", **kw: Any) -> CliCase:
    """A ``finetune`` of the digits CNN whose run directory is ``{out}``."""
    return CliCase(id, ("finetune", "slimify:digitsnet", "--data", data, *args, "-o", "{out}"), message, out="run",
                   **kw)


CLI_CASES: list[CliCase] = [
    # switches and widths
    _c("switches-zero", "convert", "slimify:tinynet", "--switches", "0,1", "-o", "{out}", message="(0, 1]"),
    _c("switches-above-1", "convert", "slimify:tinynet", "--switches", "0.5,1.5", "-o", "{out}", message="(0, 1]"),
    _c("switches-negative", "convert", "slimify:tinynet", "--switches=-0.5,1", "-o", "{out}", message="(0, 1]"),
    _c("switches-empty", "convert", "slimify:tinynet", "--switches", "", "-o", "{out}", message="(0, 1]"),
    _c("switches-unparsable", "convert", "slimify:tinynet", "--switches", "a,b", "-o", "{out}", message="0.25,0.5"),
    _c("switches-nan", "convert", "slimify:tinynet", "--switches", "nan,1", "-o", "{out}", message="(0, 1]"),
    _c("switches-too-narrow", "convert", "slimify:tinynet", "--switches", "0.001,1", "-o", "{out}",
       message="the smallest usable width is"),
    _c("width-unknown-name-export", "export", "{ok.slim}", "--width", "nope", "-o", "{out}", out="o.onnx",
       message="no width configuration named 'nope'"),
    _ft("switches-finetune", "--switches", "2", message="(0, 1]"),
    _c("switches-demo-no-1", "demo", "--switches", "0.5", "-o", "{out}", out="demo", message="must include 1.0"),
    _c("divisor-zero", "convert", "slimify:tinynet", "--divisor", "0", "-o", "{out}", message="--divisor"),
    _c("width-below-range-export", "export", "{ok.slim}", "--width", "0.1", "-o", "{out}", out="o.onnx",
       message="outside this model's range"),
    _c("width-above-1-export", "export", "{ok.slim}", "--width", "2", "-o", "{out}", out="o.pt",
       message="outside this model's range"),
    _c("width-below-range-eval", "eval", *DIGITS, "--widths", "0.1", message="outside this model's range"),
    _c("widths-unparsable-eval", "eval", *DIGITS, "--widths", "x", message="no width configuration named 'x'"),
    _c("widths-out-of-range-eval", "eval", *DIGITS, "--widths", "0.5,1.5", message="outside this model's range"),
    # model names and sources
    _c("model-unknown-timm", "convert", "no_such_model_xyz", "-o", "{out}", message="unknown model"),
    _c("model-unknown-torchvision", "convert", "torchvision:no_such_net", "-o", "{out}", message="unknown model"),
    _c("model-unknown-slimify", "convert", "slimify:nope", "-o", "{out}", message="known: ['digitsnet'"),
    _c("model-os-system", "convert", "os:system", "-o", "{out}", message="not allowed"),
    _c("model-builtins-exec", "convert", "builtins:exec", "-o", "{out}", message="not allowed"),
    _c("model-private-timm", "convert", "timm.models._builder:build_model_with_cfg", "-o", "{out}",
       message="not a model factory"),
    _c("model-empty", "convert", "", "-o", "{out}", message="is empty"),
    _c("model-unknown-finetune", "finetune", "no_such_model_xyz", "--data", "digits", "-o", "{out}", out="run",
       message="unknown model"),
    _c("model-os-eval", "eval", "os:system", "--data", "digits", message="not allowed"),
    _c("input-size-zero", "convert", "slimify:tinynet", "--input-size", "3x0x5", "-o", "{out}", message="3x224x224"),
    _c("input-size-channels", "convert", "slimify:tinynet", "--input-size", "1x32x32", "-o", "{out}",
       message="channels"),
    # checkpoints that are damaged or do not match the model
    _c("ckpt-shape", "convert", "slimify:tinynet", *TINY, "--checkpoint", "{shape.pt}", "-o", "{out}",
       message="shape (2): fc.weight (3, 64)"),
    _c("ckpt-keys", "convert", "slimify:tinynet", *TINY, "--checkpoint", "{digits.safetensors}", "-o", "{out}",
       message="does not match the model"),
    _c("ckpt-garbage", "convert", "slimify:tinynet", *TINY, "--checkpoint", "{garbage.pt}", "-o", "{out}",
       message="cannot read weights safely"),
    _c("ckpt-empty-safetensors", "convert", "slimify:tinynet", *TINY, "--checkpoint", "{empty.safetensors}",
       "-o", "{out}", message="cannot read weights safely"),
    _c("ckpt-truncated-safetensors", "convert", "slimify:tinynet", *TINY, "--checkpoint", "{cut.safetensors}",
       "-o", "{out}", message="cannot read weights safely"),
    _c("ckpt-raw-pickle", "convert", "slimify:tinynet", *TINY, "--checkpoint", "{raw.pt}", "-o", "{out}",
       message="never unpickled"),
    _c("ckpt-not-a-dict", "convert", "slimify:tinynet", *TINY, "--checkpoint", "{list.pt}", "-o", "{out}",
       message="does not hold a state dict"),
    _c("ckpt-missing", "convert", "slimify:tinynet", "--checkpoint", "{missing.pt}", "-o", "{out}",
       message="does not exist"),
    _ft("ckpt-finetune-shape", "--checkpoint", "{shape.pt}", message="does not match the model"),
    _c("train-ckpt-wrong-model", "eval", "{train_wrong.pt}", "--data", "digits", message="does not match the model"),
    _c("train-ckpt-garbage", "eval", "{garbage.pt}", "--data", "digits", message="not a readable slimify checkpoint"),
    _c("train-ckpt-no-spec", "eval", "{train_nospec.pt}", "--data", "digits", message="no model_spec"),
    _c("train-ckpt-os-spec", "eval", "{train_os.pt}", "--data", "digits", message="not allowed"),
    _c("resume-other-model", "finetune", *DIGITS, "--recipe", "{tiny.yaml}", "--resume", "-o", "{run_other}",
       message="does not match the model"),
    _c("resume-not-a-run", "finetune", *DIGITS, "--recipe", "{tiny.yaml}", "--resume", "-o", "{run_model_only}",
       message="not a training-run checkpoint"),
    # .slim files: empty, truncated, corrupt, hostile, tampered
    _c("slim-empty", "inspect", "{empty.slim}", message="is empty"),
    _c("slim-truncated", "inspect", "{cut.slim}", message="truncated"),
    _c("slim-header-only", "inspect", "{header.slim}", message="truncated"),
    _c("slim-garbage", "inspect", "{garbage.slim}", message="not a .slim file"),
    _c("slim-torch-pickle", "inspect", "{pickle.slim}", message="not a .slim file"),
    _c("slim-plain-safetensors", "inspect", "{plain.slim}", message="without slimify metadata"),
    _c("slim-missing", "inspect", "{missing.slim}", message="does not exist"),
    _c("slim-source-os", "inspect", "{os.slim}", message="not allowed"),
    _c("slim-source-builtins", "export", "{builtins.slim}", "--width", "1", "-o", "{out}", out="o.pt",
       message="not allowed"),
    _c("slim-source-pretrained", "inspect", "{pretrained.slim}", message="not accepted"),
    _c("slim-newer-version", "inspect", "{newer.slim}", message="upgrade slimify"),
    _c("slim-tampered-bytes", "inspect", "{tampered.slim}", message="checksum"),
    _c("slim-plan-digest", "inspect", "{plan.slim}", message="slims differently"),
    _c("slim-renamed-tensor", "inspect", "{renamed.slim}", message="does not match the model"),
    _c("slim-source-os-eval", "eval", "{os.slim}", "--data", "digits", message="not allowed"),
    _c("slim-truncated-profile", "profile", "{cut.slim}", "--runs", "1", message="truncated"),
    # recipes
    _ft("recipe-unknown-key", "--recipe", "{unknown.yaml}", message="unknown key 'learning_rate'"),
    _ft("recipe-typo", "--recipe", "{typo.yaml}", message="did you mean 'epochs'"),
    _ft("recipe-type-str", "--recipe", "{lr_str.yaml}", message="'lr' must be float"),
    _ft("recipe-type-float-int", "--recipe", "{epochs_float.yaml}", message="'epochs' must be int"),
    _ft("recipe-negative-lr", "--recipe", "{lr_neg.yaml}", message="'lr' must be > 0"),
    _ft("recipe-bad-choice", "--recipe", "{adam.yaml}", message="one of sgd, adamw"),
    _ft("recipe-list", "--recipe", "{list.yaml}", message="mapping"),
    _ft("recipe-bad-yaml", "--recipe", "{broken.yaml}", message="not valid YAML"),
    _ft("recipe-missing", "--recipe", "no_such_recipe", message="shipped recipe"),
    _ft("override-epochs-zero", "--epochs", "0", message="--epochs"),
    # data
    _ft("data-missing", data="{missing_dir}", message="does not exist"),
    _ft("data-empty-dir", data="{empty_dir}", message="not an image folder"),
    _ft("data-no-images", data="{text_dir}", message="not an image folder"),
    _ft("data-fake-png", "--recipe", "{tiny.yaml}", data="{fake_png}", message="not a readable image",
        leaves=STARTED),
    _ft("data-fake-png-worker", "--recipe", "{tiny.yaml}", "--workers", "1", data="{fake_png}",
        message="not a readable image", leaves=STARTED),
    _ft("data-too-small", "--batch-size", "100000", "--workers", "0", message="fewer than one batch"),
    _c("data-more-classes-eval", "eval", "{ok.slim}", "--data", "digits", message="10 classes but the model has 5"),
    _c("data-more-classes-finetune", "finetune", "{ok.slim}", "--data", "digits", "-o", "{out}", out="run",
       message="--num-classes 10"),
    _c("data-missing-eval", "eval", "slimify:digitsnet", "--data", "{missing_dir}", message="does not exist"),
    # outputs: existing (no --force), wrong kind, not writable
    _c("out-exists-convert", "convert", "slimify:tinynet", "-o", "{out}", existing=True, message="--force"),
    _c("out-exists-export", "export", "{ok.slim}", "--width", "0.5", "-o", "{out}", out="o.onnx", existing=True,
       message="--force"),
    _c("out-exists-profile", "profile", "{ok.slim}", "--json", "{out}", out="p.json", existing=True, message="--force"),
    _c("out-exists-eval-json", "eval", "{ok.slim}", "--data", "digits", "--json", "{out}", out="m.json",
       existing=True, message="--force"),
    _c("out-exists-calibrate", "calibrate", *DIGITS, "-o", "{out}", existing=True, message="--force"),
    _c("out-finished-run", "finetune", *DIGITS, "-o", "{run_done}", message="--resume"),
    _c("out-suffix", "convert", "slimify:tinynet", "-o", "{out}", out="o.txt", message="must end with .slim"),
    _c("out-is-dir", "export", "{ok.slim}", "--width", "0.5", "-o", "{empty_dir}", message="is a directory"),
    _c("out-parent-missing", "convert", "slimify:tinynet", *TINY, "-o", "{out}", out="no/such/o.slim",
       message="does not exist"),
    _c("out-not-writable-convert", "convert", "slimify:tinynet", *TINY, "-o", "{ro}/o.slim", message="cannot write"),
    _c("out-not-writable-export", "export", "{ok.slim}", "--width", "0.5", "-o", "{ro}/o.onnx",
       message="cannot write"),
    # reordering pretrained weights
    _c("reorder-slim-input", "reorder", "{ok.slim}", "-o", "{out}", out="o.safetensors", message="already slimmable"),
    _c("reorder-taylor-no-data", "reorder", "slimify:tinynet", "--method", "taylor", "-o", "{out}", out="o.pt",
       message="needs --data"),
    _c("reorder-taylor-data-missing", "reorder", "slimify:tinynet", *TINY, "--method", "taylor", "--data",
       "{missing_dir}", "-o", "{out}", out="o.pt", message="does not exist"),
    _c("reorder-ckpt-shape", "reorder", "slimify:tinynet", *TINY, "--checkpoint", "{shape.pt}", "-o", "{out}",
       out="o.safetensors", message="does not match the model"),
    _c("reorder-out-exists", "reorder", "slimify:tinynet", "-o", "{out}", out="o.pt", existing=True,
       message="--force"),
    # devices, budgets, commands
    _ft("device-cuda-finetune", "--recipe", "{tiny.yaml}", "--device", "cuda", message="CUDA is not available",
        no_cuda=True),
    _c("device-cuda-profile", "profile", "{ok.slim}", "--device", "cuda", "--runs", "1",
       message="CUDA is not available", no_cuda=True),
    _c("device-bogus-profile", "profile", "{ok.slim}", "--device", "bogus", "--runs", "1", message="unknown device"),
    _c("pick-no-budget", "pick", "{ok.slim}", message="at least one budget"),
    _c("pick-bad-amount", "pick", "{ok.slim}", "--flops", "lots", message="such as 300k"),
    _c("pick-nothing-fits", "pick", "{ok.slim}", "--params", "1", "--runs", "1", "--warmup", "0", "--mode", "slim",
       message="no switch fits"),
    _c("command-unknown", "finetuen", message="no such command"),
    _c("argument-missing", "convert", message="missing argument"),
]

# input sizes and data configs (issue 22): every command that takes them, on ok.slim's 32-px TinyNet
_COMMANDS = {"inspect": ("inspect", "{ok.slim}"), "finetune": ("finetune", "{ok.slim}", "--data", "digits", "-o", "{out}"),
             "calibrate": ("calibrate", "{ok.slim}", "--data", "digits", "-o", "{out}"),
             "eval": ("eval", "{ok.slim}", "--data", "digits"),
             "export": ("export", "{ok.slim}", "--width", "0.5", "-o", "{out}"), "profile": ("profile", "{ok.slim}"),
             "pick": ("pick", "{ok.slim}", "--params", "1G"),
             "search": ("search", "{ok.slim}", "--data", "digits", "--params", "0.5x", "-o", "{out}"),
             "reorder": ("reorder", "slimify:tinynet", "-o", "{out}")}
_SIZE_COMMANDS = ("inspect", "finetune", "calibrate", "eval", "export", "profile", "pick")  # --input-size of a file
_DATA_COMMANDS = ("finetune", "calibrate", "eval", "search", "reorder")  # --crop-pct, --mean, --std
_OUT = {"finetune": "run", "export": "o.onnx", "reorder": "o.pt"}  # the output each command would write
SIZE_CASES = [("channels", ("--input-size", "1x32x32"), "1 channel"),  # the model takes 3
              ("tiny", ("--input-size", "2"), "smaller than the model's downsampling")]  # 8x8 at 32: at least 4
DATA_CASES = [("crop-zero", ("--crop-pct", "0"), "(0, 1]"), ("crop-above-1", ("--crop-pct", "1.5"), "(0, 1]"),
              ("mean-length", ("--mean", "0.5,0.5"), "mean has 2 values"),
              ("std-length", ("--std", "0.2,0.2,0.2,0.2"), "std has 4 values"),
              ("std-zero", ("--std", "0.5,0,0.5"), "std must be positive"), ("std-negative", ("--std=-1",), "positive"),
              ("mean-text", ("--mean", "grey"), "expected numbers")]
CLI_CASES += [CliCase(f"size-{name}-{cmd}", (*_COMMANDS[cmd], *opt), message, out=_OUT.get(cmd, "o.slim"))
              for cmd in _SIZE_COMMANDS for name, opt, message in SIZE_CASES]
CLI_CASES += [CliCase(f"data-{name}-{cmd}", (*_COMMANDS[cmd], *opt), message, out=_OUT.get(cmd, "o.slim"))
              for cmd in _DATA_COMMANDS for name, opt, message in DATA_CASES]
CLI_CASES += [_c("size-channels-reorder", *_COMMANDS["reorder"], "--input-size", "1x32x32", out="o.pt", message="channels")]

# cases also run as ``python -m slimify`` in a fresh process (real stderr: warnings, logging)
SUBPROCESS_IDS = ["slim-source-os", "recipe-unknown-key", "data-fake-png-worker", "ckpt-raw-pickle",
                  "size-channels-profile"]


def _write_slim_variants(root: Path, ok: Path) -> None:
    """Copies of ``ok`` with one thing changed in the config or the tensors."""
    def variant(name: str, config_change: Callable[[dict], None] | None = None,
                tensor_change: Callable[[dict], None] | None = None, fix_digest: bool = True) -> None:
        rewrite_slim(ok, root / name, config_change, tensor_change, fix_digest)

    marker = root / "PWNED"
    variant("os.slim", lambda c: c.update(source={"spec": "os:system", "kwargs": {"command": f"touch {marker}"}}))
    variant("builtins.slim", lambda c: c.update(source={"spec": "builtins:exec", "kwargs": {}}))
    variant("pretrained.slim", lambda c: c["source"]["kwargs"].update(pretrained=True))
    variant("newer.slim", lambda c: c.update(version=99))
    variant("plan.slim", lambda c: c.update(plan_sha256="0" * 64))
    variant("tampered.slim", tensor_change=lambda t: t["fc.bias"].add_(1), fix_digest=False)
    variant("renamed.slim", tensor_change=lambda t: t.update(extra=t.pop("fc.bias")))
    raw = ok.read_bytes()
    (root / "empty.slim").write_bytes(b"")
    (root / "cut.slim").write_bytes(raw[: len(raw) * 3 // 5])
    (root / "header.slim").write_bytes(raw[: 8 + int.from_bytes(raw[:8], "little")])
    (root / "garbage.slim").write_bytes(bytes(range(256)) * 8)
    torch.save({"fc.weight": torch.zeros(2)}, root / "pickle.slim")
    save_file({"w": torch.zeros(2)}, str(root / "plain.slim"))


def _write_checkpoints(root: Path) -> None:
    torch.save(TinyNet(num_classes=3).state_dict(), root / "shape.pt")
    save_file(DigitsNet().state_dict(), str(root / "digits.safetensors"))
    save_file(TinyNet().state_dict(), str(root / "full.safetensors"))
    (root / "cut.safetensors").write_bytes((root / "full.safetensors").read_bytes()[:3000])
    (root / "garbage.pt").write_bytes(b"not a checkpoint " * 40)
    (root / "empty.safetensors").write_bytes(b"")
    torch.save([torch.zeros(3)], root / "list.pt")
    (root / "raw.pt").write_bytes(pickle.dumps({"fc.weight": [1.0, 2.0]}))  # protocol 4: torch warns about it
    spec = {"name": "slimify:digitsnet", "num_classes": 10, "switches": [0.5, 1.0], "divisor": 8,
            "input_size": [3, 32, 32]}
    save_checkpoint(root / "train_wrong.pt", {"model": TinyNet().state_dict(), "model_spec": spec})
    save_checkpoint(root / "train_nospec.pt", {"model": DigitsNet().state_dict()})
    save_checkpoint(root / "train_os.pt", {"model": {}, "model_spec": {"name": "os:system"}})
    run = {"optimizer": {}, "scheduler": {}, "scaler": {}, "step": 1, "epoch": 0, "batch": 1, "rng": {}, "data": {}}
    save_checkpoint(root / "run_other" / "checkpoint.pt", {**run, "model": TinyNet().state_dict()})
    save_checkpoint(root / "run_model_only" / "checkpoint.pt", {"model": DigitsNet().state_dict(), "model_spec": spec})
    save_checkpoint(root / "run_done" / "checkpoint.pt", {"model": {}, "model_spec": spec})
    (root / "run_done" / "model.slim").write_bytes(b"a finished run's model")


def _write_recipes_and_data(root: Path) -> None:
    recipes = {"unknown": "epochs: 1\nlearning_rate: 0.1\n", "typo": "epoch: 1\n", "lr_str": "lr: fast\n",
               "epochs_float": "epochs: 1.5\n", "lr_neg": "lr: -0.1\n", "adam": "optimizer: adam\n",
               "list": "- lr\n- 0.1\n", "broken": "lr: [0.1, 0.2\n",
               "tiny": "epochs: 1\nbatch_size: 2\nworkers: 0\ncalibrate_batches: 0\nlog_every: 1\n"}
    for name, text in recipes.items():
        (root / f"{name}.yaml").write_text(text)
    (root / "empty_dir").mkdir()
    (root / "text_dir" / "cat").mkdir(parents=True)
    (root / "text_dir" / "cat" / "notes.txt").write_text("no images here")
    for cls in ("cat", "dog"):
        (root / "fake_png" / cls).mkdir(parents=True)
        (root / "fake_png" / cls / "x.png").write_text("this is text, not a PNG")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A directory of every damaged, hostile or mismatched input the tables refer to."""
    root = tmp_path_factory.mktemp("inputs")
    model = slimify.convert(create("slimify:tinynet", num_classes=5), example_input=torch.randn(1, 3, 32, 32))
    slimify.state.get_state(model).record.example_shape = [1, 3, 32, 32]
    slimify.save(model, root / "ok.slim")
    _write_slim_variants(root, root / "ok.slim")
    _write_checkpoints(root)
    _write_recipes_and_data(root)
    return root


def unwritable_dir(tmp: Path) -> Path | None:
    """A directory this process cannot create files in (root ignores mode bits: try /sys)."""
    locked = tmp / "locked"
    locked.mkdir(exist_ok=True)
    locked.chmod(0o555)
    for candidate in (locked, Path("/sys")):
        try:
            (candidate / ".probe").touch()
        except OSError:
            return candidate
        (candidate / ".probe").unlink()
    return None


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def cli_args(case: CliCase, files: Path, out: Path, tmp: Path) -> list[str]:
    names = {p.name: str(p) for p in files.iterdir()}
    names.update({"out": str(out / case.out), "missing.pt": str(files / "missing.pt"),
                  "missing.slim": str(files / "missing.slim"), "missing_dir": str(files / "missing_dir")})
    if any("{ro}" in a for a in case.args):
        ro = unwritable_dir(tmp)
        if ro is None:
            pytest.skip("no unwritable directory on this machine")
        names["ro"] = str(ro)
    return [re.sub(r"\{([^{}]+)\}", lambda m: names[m.group(1)], a) for a in case.args]


@contextlib.contextmanager
def fresh_process_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record the warnings a fresh ``python -m slimify`` would print (Python's default filters)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=category)
        yield caught


def check_error_line(err: str, stdout: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("error: ") and message.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err + stdout


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input(case: CliCase, files: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if case.no_cuda and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    out.mkdir()
    if case.existing:
        (out / case.out).write_bytes(b"keep me")
    args = cli_args(case, files, out, tmp_path)
    before = snapshot(files)
    with pytest.raises(SystemExit) as exit_info, fresh_process_warnings() as caught:
        main(args)
    stdout, err = capsys.readouterr()
    assert exit_info.value.code == 2, err
    assert [str(w.message) for w in caught] == [], "a fresh process would print these on stderr too"
    check_error_line(err, stdout, case.message)
    expected = [case.out] if case.existing else []
    assert listing(out) in (expected, sorted(case.leaves)), "partial or temporary output left behind"
    if case.existing:
        assert (out / case.out).read_bytes() == b"keep me"
    assert snapshot(files) == before, "an input file was changed"
    assert not (files / "PWNED").exists()


@pytest.mark.parametrize("case_id", SUBPROCESS_IDS)
def test_cli_bad_input_in_a_fresh_process(case_id: str, files: Path, tmp_path: Path) -> None:
    case = next(c for c in CLI_CASES if c.id == case_id)
    out = tmp_path / "out"
    out.mkdir()
    if case.existing:
        (out / case.out).write_bytes(b"keep me")
    done = subprocess.run([sys.executable, "-m", "slimify", *cli_args(case, files, out, tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    check_error_line(done.stderr, done.stdout, case.message)
    assert listing(out) in ([case.out] if case.existing else [], sorted(case.leaves))


def test_force_replaces_what_the_refusals_protect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The other side of the ``existing`` cases: with --force the same commands do their work."""
    metrics, model = tmp_path / "m.json", tmp_path / "m.slim"
    metrics.write_text("old")
    model.write_text("old")
    for args in (["eval", *DIGITS, "--widths", "1", "--json", str(metrics), "--force"],
                 ["calibrate", *DIGITS, "--batches", "1", "--batch-size", "8", "-o", str(model), "--force"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 0, capsys.readouterr().err
    assert [row["width"] for row in json.loads(metrics.read_text())] == [1.0]
    assert slimify.switches(slimify.load(model)) == (0.25, 0.5, 0.75, 1.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.slim"]


def test_the_table_is_large_and_ids_are_unique() -> None:
    ids = [c.id for c in CLI_CASES]
    assert len(ids) == len(set(ids)) and len(ids) + len(API_CASES) >= 60
    assert set(SUBPROCESS_IDS) <= set(ids)


# -- the API --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiCase:
    id: str
    call: Callable[[Path, Path], Any]  # (fixture files, an empty output directory) → raises
    message: str
    existing: str | None = None  # a file created in the output directory first; it must survive


def _tiny(switches: Any = (0.5, 1.0), divisor: Any = 8) -> torch.nn.Module:
    return slimify.convert(TinyNet(), switches, divisor, example_input=torch.randn(1, 3, 32, 32))


def _loaded(files: Path) -> torch.nn.Module:
    return slimify.load(files / "ok.slim")


def _finetune(files: Path, out: Path, **kw: Any) -> Any:
    model = slimify.convert(DigitsNet(), (0.5, 1.0), example_input=torch.randn(1, 3, 32, 32))
    kw = {"recipe": "demo", "batch_size": 8, "workers": 0, "calibrate_batches": 0, "progress": False, **kw}
    return finetune(model, Subset(digits("train"), range(16)), out_dir=out / "run", **kw)


def _a(id: str, call: Callable[[Path, Path], Any], message: str, existing: str | None = None) -> ApiCase:
    return ApiCase(id, call, message, existing)


API_CASES: list[ApiCase] = [
    _a("convert-switches-empty", lambda f, o: _tiny(()), "empty"),
    _a("convert-switches-zero", lambda f, o: _tiny((0.0, 1.0)), "(0, 1]"),
    _a("convert-switches-above-1", lambda f, o: _tiny((1.5,)), "(0, 1]"),
    _a("convert-switches-nan", lambda f, o: _tiny((float("nan"), 1.0)), "(0, 1]"),
    _a("convert-switches-str", lambda f, o: _tiny(("half", 1.0)), "numbers"),
    _a("convert-switches-none", lambda f, o: _tiny(None), "numbers"),
    _a("convert-switches-duplicate", lambda f, o: _tiny((0.5, 0.5, 1.0)), "duplicates"),
    _a("convert-divisor-zero", lambda f, o: _tiny(divisor=0), "divisor"),
    _a("convert-divisor-float", lambda f, o: _tiny(divisor=2.5), "divisor"),
    _a("convert-not-a-module", lambda f, o: slimify.convert("resnet18"), "nn.Module"),
    _a("convert-twice", lambda f, o: slimify.convert(_tiny()), "already slimmable"),
    _a("set-width-out-of-range", lambda f, o: slimify.set_width(_tiny(), 0.25), "outside this model's range"),
    _a("width-context-out-of-range", lambda f, o: slimify.width(_tiny(), 2.0).__enter__(), "outside this model's range"),
    _a("set-width-plain-model", lambda f, o: slimify.set_width(TinyNet(), 1.0), "not a slimmable model"),
    _a("export-width-out-of-range", lambda f, o: slimify.export(_tiny(), 0.3), "outside this model's range"),
    _a("create-os-system", lambda f, o: create("os:system"), "not allowed"),
    _a("create-not-a-string", lambda f, o: create(123), "must be a string"),
    _a("create-unknown-torchvision", lambda f, o: create("torchvision:no_such_net"), "unknown model"),
    _a("create-pretrained-refused", lambda f, o: create("resnet10t", pretrained=True), "not accepted"),
    _a("create-kwargs-not-json", lambda f, o: create("slimify:tinynet", width=object()), "plain JSON"),
    _a("create-ckpt-shape", lambda f, o: create("slimify:tinynet", checkpoint=f / "shape.pt"), "does not match"),
    _a("create-ckpt-garbage", lambda f, o: create("slimify:tinynet", checkpoint=f / "garbage.pt"), "safely"),
    _a("read-state-dict-list", lambda f, o: read_state_dict(f / "list.pt"), "state dict"),
    _a("load-empty", lambda f, o: slimify.load(f / "empty.slim"), "is empty"),
    _a("load-truncated", lambda f, o: slimify.load(f / "cut.slim"), "truncated"),
    _a("load-source-os", lambda f, o: slimify.load(f / "os.slim"), "not allowed"),
    _a("load-missing", lambda f, o: slimify.load(f / "missing.slim"), "does not exist"),
    _a("save-exists", lambda f, o: slimify.save(_loaded(f), o / "m.slim"), "overwrite=True", existing="m.slim"),
    _a("save-parent-missing", lambda f, o: slimify.save(_loaded(f), o / "no" / "m.slim"), "does not exist"),
    _a("save-plain-model", lambda f, o: slimify.save(TinyNet(), o / "m.slim"), "not a slimmable model"),
    _a("recipe-unknown-key", lambda f, o: load_recipe({"learning_rate": 0.1}), "unknown key"),
    _a("recipe-wrong-type", lambda f, o: load_recipe({"batch_size": "64"}), "must be int"),
    _a("recipe-bool-for-int", lambda f, o: load_recipe({"epochs": True}), "must be int"),
    _a("recipe-override-bad", lambda f, o: load_recipe("demo", label_smoothing=1.5), "label_smoothing"),
    _a("finetune-data-too-small", lambda f, o: _finetune(f, o, batch_size=64), "fewer than one batch"),
    _a("finetune-resume-missing", lambda f, o: _finetune(f, o, resume=f / "missing.pt"), "does not exist"),
    _a("finetune-bad-device", lambda f, o: _finetune(f, o, device="bogus"), "unknown device"),
    _a("evaluate-width-out-of-range", lambda f, o: evaluate(_loaded(f), digits("val"), widths=(0.1,)),
       "outside this model's range"),
    _a("load-checkpoint-garbage", lambda f, o: load_checkpoint(f / "garbage.pt"), "not a readable"),
    _a("load-checkpoint-foreign", lambda f, o: load_checkpoint(f / "shape.pt"), "not a slimify training checkpoint"),
    _a("digits-bad-split", lambda f, o: digits("test"), "split"),
    _a("profile-runs-zero", lambda f, o: slimify.profile(_loaded(f), 32, runs=0), "runs"),
    _a("profile-bad-device", lambda f, o: slimify.profile(_loaded(f), 32, runs=1, device="bogus"), "unknown device"),
    _a("pick-bad-amount", lambda f, o: parse_amount("lots"), "such as 300k"),
    _a("reorder-unknown-method", lambda f, o: slimify.reorder(TinyNet(), "magic"), "unknown reorder method"),
    _a("input-size-channels", lambda f, o: check_input_size(_loaded(f), (1, 32, 32)), "1 channel"),
    _a("input-size-tiny", lambda f, o: check_input_size(_loaded(f), (3, 3, 3)), "at least 4x4"),
    _a("data-config-crop", lambda f, o: DataConfig(crop_pct=0.0), "(0, 1]"),
    _a("data-config-std", lambda f, o: DataConfig(std=(0.2, -0.2, 0.2)), "positive"),
    _a("data-config-mean-length", lambda f, o: model_transform(_loaded(f), False, data_config=DataConfig(mean=(0, 0))),
       "mean has 2 values"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_bad_input(case: ApiCase, files: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if case.existing:
        (out / case.existing).write_bytes(b"keep me")
    before = snapshot(files)
    with pytest.raises(SlimifyError) as error:
        case.call(files, out)
    text = str(error.value)
    assert text and "\n" not in text and "Traceback" not in text, text
    assert case.message.lower() in text.lower(), text
    assert listing(out) == ([case.existing] if case.existing else []), "partial or temporary output left behind"
    if case.existing:
        assert (out / case.existing).read_bytes() == b"keep me"
    assert snapshot(files) == before


def test_api_ids_are_unique() -> None:
    assert len({c.id for c in API_CASES}) == len(API_CASES)
