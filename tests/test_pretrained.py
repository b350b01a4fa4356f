"""``--pretrained``: published weights through timm's own loader, tested offline on a hub cache
written here (no download), and one clear error when the cached copy is missing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimify.cli.app import main

REV = "0123456789abcdef0123456789abcdef01234567"  # any commit id: refs/main points at it

# Runs in a fresh interpreter: huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE when imported.
SCRIPT = r"""
import json, sys, torch, timm
from pathlib import Path
from safetensors.torch import save_file
from click.testing import CliRunner
import slimify
from slimify.cli.app import cli
from slimify.store.sources import source_of
from slimify.store.pretrained import create_pretrained

cache, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(1)
published = {}
for arch, tag in (("resnet18", "a1_in1k"), ("test_resnet", "r160_in1k")):
    ref = timm.create_model(arch).eval()
    repo = cache / f"models--timm--{arch}.{tag}"
    (repo / "snapshots" / sys.argv[3]).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sys.argv[3])
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(repo / "snapshots" / sys.argv[3] / "model.safetensors"))
    published[arch] = ref
report = {}
model = create_pretrained("resnet18", tag="a1_in1k")
ref = published["resnet18"].state_dict()
report["same_weights"] = all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
report["source"] = source_of(model).spec
headless = create_pretrained("resnet18", tag="a1_in1k", num_classes=10)
report["new_head"] = [list(headless.fc.weight.shape), torch.equal(headless.conv1.weight, ref["conv1.weight"])]
result = CliRunner().invoke(cli, ["convert", "test_resnet", "--pretrained", "--input-size", "64",
                                  "--switches", "0.5,1.0", "-o", str(out)])
report["convert"] = [result.exit_code, result.output]
net = slimify.load(out).eval()
x = torch.randn(2, 3, 64, 64)
with torch.no_grad():
    report["full_width_diff"] = float((net(x) - published["test_resnet"](x)).abs().max())
missing = CliRunner().invoke(cli, ["convert", "resnet18", "--pretrained", "--pretrained-tag", "a2_in1k",
                                   "-o", str(out.with_name("b.slim"))])
report["missing"] = [missing.exit_code, str(missing.exception)]
from slimify.train.resolve import load_slimmable, model_from_spec
tuned, spec = load_slimmable("test_resnet", switches=(0.5, 1.0), num_classes=10, input_size=(3, 32, 32),
                             pretrained=True)  # what `slimify finetune test_resnet --pretrained` starts from
rebuilt = model_from_spec(spec)  # a checkpoint's model_spec rebuilds it without weights, then loads its own
report["finetune_spec"] = [spec["name"], spec["pretrained"], type(rebuilt).__name__]
report["finetune_body"] = torch.equal(tuned.conv1[0].weight, published["test_resnet"].conv1[0].weight)
print(json.dumps(report))
"""


def test_pretrained_from_an_offline_hub_cache(tmp_path) -> None:
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TORCH_HOME=str(tmp_path / "torch"))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "hub"), str(tmp_path / "a.slim"), REV],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["same_weights"] and report["source"] == "resnet18.a1_in1k"
    assert report["new_head"] == [[10, 512], True]  # 10 classes: a fresh head on the published body
    assert report["convert"][0] == 0, report["convert"][1]
    assert "reordered by bn" in report["convert"][1]  # published weights: important channels first
    assert report["full_width_diff"] < 1e-4  # full width reproduces the published model
    assert report["finetune_spec"][:2] == ["test_resnet.r160_in1k"] * 2 and report["finetune_body"]
    assert report["missing"][0] == 1 and "timm/resnet18.a2_in1k" in report["missing"][1] \
        and "HF_HUB_OFFLINE" in report["missing"][1] and str(tmp_path / "hub") in report["missing"][1]


def _run_main(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["convert", "resnet18", "--pretrained", "--pretrained-tag", "nope", "-o", "x.slim"], "published tags: a1_in1k"),
    (["convert", "slimify:tinynet", "--pretrained", "-o", "x.slim"], "has none"),
    (["convert", "resnet18", "--pretrained-tag", "a1_in1k", "-o", "x.slim"], "pass --pretrained with it"),
    (["finetune", "resnet18", "--pretrained", "--checkpoint", __file__, "--data", "digits"], "pass one of them"),
    (["convert", "torchvision:resnet18", "--pretrained", "--pretrained-tag", "V9", "-o", "x.slim"],
     "published: IMAGENET1K_V1"),
])
def test_bad_pretrained_input_is_one_line(args, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _run_main(args, capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and not Path("x.slim").exists()


def test_torchvision_offline_without_a_copy_names_the_file(capsys, tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    code, err = _run_main(["convert", "torchvision:resnet18", "--pretrained", "-o", str(tmp_path / "x.slim")],
                          capsys)
    assert code == 2 and str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err
