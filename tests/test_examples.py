"""The example scripts (issue 7) run end to end on small inputs, each in a fresh process, and
produce what they promise: a report and a reloadable .slim, a retrofitted model, an ONNX file."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import slimify
from slimify.store.slimfile import read_config
from slimify.store.sources import TinyNet

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: object, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def tiny_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 128, (40, 40, 3), dtype=np.uint8) + 100 * label  # separable classes
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root


def test_every_example_is_tested() -> None:
    tested = {"convert_and_inspect.py", "retrofit_imagefolder.py", "pick_and_export_onnx.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_convert_and_inspect(tmp_path: Path) -> None:
    out = run_example("convert_and_inspect.py", "--model", "resnet10t", "--input-size", "64", "--switches",
                      "0.5,1.0", "--out", "rn10t.slim", cwd=tmp_path)
    assert "channel groups" in out and "fixed groups" in out and "width 0.5" in out
    assert "identical at width 0.5: True" in out
    assert read_config(tmp_path / "rn10t.slim")["source"]["spec"] == "resnet10t"


def test_retrofit_imagefolder(tmp_path: Path) -> None:
    data = tiny_image_folder(tmp_path / "data")
    torch.save(TinyNet().state_dict(), tmp_path / "tiny.pth")  # a "pretrained" 10-class checkpoint
    out = run_example("retrofit_imagefolder.py", "--model", "slimify:tinynet", "--checkpoint", "tiny.pth", "--data",
                      data, "--input-size", "32", "--epochs", "1", "--batch-size", "4", "--workers", "0",
                      "--run-dir", "run", "--out", "pets.slim", cwd=tmp_path)
    assert "top-1" in out and all(f"{w:.2f}" in out for w in (0.25, 0.5, 0.75, 1.0))
    model = slimify.load(tmp_path / "pets.slim")
    assert model.fc.out_features == 2 and slimify.switches(model) == (0.25, 0.5, 0.75, 1.0)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_pick_and_export_onnx(tmp_path: Path) -> None:
    model = slimify.convert(TinyNet(), example_input=torch.randn(1, 3, 32, 32))
    slimify.save(model, tmp_path / "tiny.slim")
    out = run_example("pick_and_export_onnx.py", "tiny.slim", "--latency-ms", "10000", "--runs", "3", "--threads",
                      "1", "--out", "fit.onnx", cwd=tmp_path)
    assert "picked width 1" in out and "max |onnx - torch|" in out and (tmp_path / "fit.onnx").is_file()
    diff = float(out.split("max |onnx - torch| = ")[1].split()[0])
    assert diff < 1e-4
