"""Files from others are data, never code (issue 8): a pickle payload planted in plain weights, a
training checkpoint or a ``.slim`` file is refused with one line by every way slimify reads it
(API, CLI, a fresh process) and never runs; a ``.slim`` config cannot make slimify import or call
anything outside the allowed model sources."""
from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import slimify
from slimify.cli.app import main
from slimify.errors import SlimifyError
from slimify.store.slimfile import META_KEY, read_config, tensors_digest
from slimify.store.sources import TinyNet, create, read_state_dict
from slimify.train.checkpoint import FORMAT, load_checkpoint
from slimify.train.resolve import load_slimmable

REPO = Path(__file__).resolve().parent.parent


def plant(marker: str) -> None:
    """What the payload does when unpickled (a real attack would call os.system instead)."""
    Path(marker).write_text("the payload ran")


class Payload:
    """An object whose unpickling calls :func:`plant` (importable, so a careless loader runs it)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return plant, (self.marker,)


def _hostile_slim_configs(root: Path, marker: Path) -> None:
    """Valid ``.slim`` files whose config names code to run (checksums fixed, so only the source
    check stands between the file and the import)."""
    ok, weights = root / "ok.slim", root / "w.pt"
    model = slimify.convert(create("slimify:tinynet"), (0.5, 1.0), example_input=torch.randn(1, 3, 32, 32))
    slimify.state.get_state(model).record.example_shape = [1, 3, 32, 32]
    slimify.save(model, ok)
    sources = {"os_system": {"spec": "os:system", "kwargs": {"command": f"touch {marker}"}},
               "subprocess": {"spec": "subprocess:run", "kwargs": {"args": ["touch", str(marker)]}},
               "pickle_loads": {"spec": "pickle:loads", "kwargs": {"data": pickle.dumps(Payload(marker)).hex()}},
               "tests_module": {"spec": "tests.test_untrusted:plant", "kwargs": {"marker": str(marker)}},
               "timm_loader": {"spec": "timm.models:load_checkpoint", "kwargs": {"checkpoint_path": str(weights)}},
               "timm_overlay": {"spec": "resnet10t", "kwargs": {"pretrained_cfg_overlay": {"file": str(weights)}}},
               "tv_weights": {"spec": "torchvision:resnet18", "kwargs": {"weights": str(weights)}},
               "private": {"spec": "timm.models._builder:load_pretrained", "kwargs": {}}}
    for name, source in sources.items():
        config, tensors = read_config(ok), load_file(str(ok))
        config["source"], config["tensors_sha256"] = source, tensors_digest(tensors)
        save_file(tensors, str(root / f"{name}.slim"), metadata={META_KEY: json.dumps(config)})


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(directory of hostile files, the marker file that exists only if a payload ran)."""
    root = tmp_path_factory.mktemp("hostile")
    marker = root / "PAYLOAD-RAN"
    weights = {k: v for k, v in TinyNet().state_dict().items()}
    torch.save({**weights, "fc.bias": Payload(marker)}, root / "w.pt")  # plain weights, one entry poisoned
    torch.save({"state_dict": weights, "extra": Payload(marker)}, root / "wrapped.pth")
    torch.save({**weights, "x": Payload(marker)}, root / "legacy.pt", _use_new_zipfile_serialization=False)
    (root / "raw.pt").write_bytes(pickle.dumps({"fc.weight": Payload(marker)}))
    (root / "raw.safetensors").write_bytes(pickle.dumps(Payload(marker)))
    spec = {"name": "slimify:tinynet", "switches": [0.5, 1.0], "divisor": 8, "input_size": [3, 32, 32]}
    torch.save({"format": FORMAT, "model": weights, "model_spec": spec, "rng": Payload(marker)}, root / "train.pt")
    (root / "run").mkdir()
    torch.save({"format": FORMAT, "model": Payload(marker), "step": 1}, root / "run" / "checkpoint.pt")
    torch.save({"format": FORMAT, "payload": Payload(marker)}, root / "model.slim")  # a torch pickle, renamed
    _hostile_slim_configs(root, marker)
    (root / "appended.slim").write_bytes((root / "ok.slim").read_bytes() + pickle.dumps(Payload(marker)))
    return root, marker


def test_the_payload_is_live(hostile: tuple[Path, Path], tmp_path: Path) -> None:
    """Control: unpickling the planted files really runs the payload, so a refusal means something."""
    root, marker = hostile
    other = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(other)))
    assert other.read_text() == "the payload ran"
    torch.save({"w": Payload(tmp_path / "ran2")}, tmp_path / "w.pt")
    torch.load(tmp_path / "w.pt", weights_only=False)
    assert (tmp_path / "ran2").exists() and not marker.exists()


# how each reader is called: (hostile file name, reader) — every one must refuse without running it
READERS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "read_state_dict-zip": ("w.pt", read_state_dict),
    "read_state_dict-wrapped": ("wrapped.pth", read_state_dict),
    "read_state_dict-legacy": ("legacy.pt", read_state_dict),
    "read_state_dict-raw-pickle": ("raw.pt", read_state_dict),
    "read_state_dict-pickle-as-safetensors": ("raw.safetensors", read_state_dict),
    "create-checkpoint": ("w.pt", lambda p: create("slimify:tinynet", checkpoint=p)),
    "load_checkpoint-training": ("train.pt", load_checkpoint),
    "load_checkpoint-run": ("run/checkpoint.pt", load_checkpoint),
    "load_slimmable-training": ("train.pt", load_slimmable),
    "finetune-resume": ("run/checkpoint.pt", lambda p: _resume(p)),
    "slim-pickle-renamed": ("model.slim", slimify.load),
    "slim-pickle-appended": ("appended.slim", slimify.load),
    "slim-source-os-system": ("os_system.slim", slimify.load),
    "slim-source-subprocess": ("subprocess.slim", slimify.load),
    "slim-source-pickle-loads": ("pickle_loads.slim", slimify.load),
    "slim-source-test-module": ("tests_module.slim", slimify.load),
    "slim-source-timm-loader": ("timm_loader.slim", slimify.load),
    "slim-source-timm-overlay": ("timm_overlay.slim", slimify.load),
    "slim-source-torchvision-weights": ("tv_weights.slim", slimify.load),
    "slim-source-private": ("private.slim", slimify.load),
    "slim-via-training-cli-resolver": ("os_system.slim", load_slimmable),
}


def _resume(path: Path) -> Any:
    from torch.utils.data import Subset

    from slimify.train import digits, finetune

    model = slimify.convert(TinyNet(), (0.5, 1.0), example_input=torch.randn(1, 3, 32, 32))
    return finetune(model, Subset(digits("train"), range(16)), "demo", batch_size=8, workers=0, resume=path,
                    progress=False)


@pytest.mark.parametrize("reader", list(READERS))
def test_api_refuses_and_never_runs_the_payload(reader: str, hostile: tuple[Path, Path]) -> None:
    root, marker = hostile
    name, read = READERS[reader]
    with pytest.raises(SlimifyError) as error:
        read(root / name)
    assert "\n" not in str(error.value)
    assert not marker.exists(), "the planted payload ran"


@pytest.mark.parametrize("args, message", [
    (["convert", "slimify:tinynet", "--checkpoint", "{root}/w.pt", "-o", "{tmp}/o.slim"], "cannot read weights safely"),
    (["reorder", "slimify:tinynet", "--checkpoint", "{root}/legacy.pt", "-o", "{tmp}/o.pt"], "cannot read weights"),
    (["inspect", "{root}/model.slim"], "not a .slim file"),
    (["inspect", "{root}/os_system.slim"], "not allowed"),
    (["export", "{root}/subprocess.slim", "--width", "1", "-o", "{tmp}/o.pt"], "not allowed"),
    (["eval", "{root}/train.pt", "--data", "digits"], "never unpickled"),
    (["finetune", "slimify:digitsnet", "--data", "digits", "--resume", "-o", "{root}/run"], "never unpickled"),
], ids=["convert-checkpoint", "reorder-checkpoint", "inspect-pickle", "inspect-os", "export-subprocess",
        "eval-train", "finetune-resume"])
def test_cli_refuses_and_never_runs_the_payload(args: list[str], message: str, hostile: tuple[Path, Path],
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, marker = hostile
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(root=root, tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not marker.exists() and list(tmp_path.iterdir()) == []


def test_a_fresh_process_that_could_import_the_payload_refuses_it(hostile: tuple[Path, Path]) -> None:
    """From the repository root ``tests.test_untrusted.plant`` is importable, so unpickling would
    run it; slimify must still refuse (the control run shows the payload would have fired)."""
    root, marker = hostile
    done = subprocess.run([sys.executable, "-m", "slimify", "eval", str(root / "train.pt"), "--data", "digits"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "never unpickled" in done.stderr and "Traceback" not in done.stderr and not marker.exists()
    control = f"import torch; torch.load({str(root / 'train.pt')!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", control], cwd=REPO, check=True, timeout=300)
    assert marker.exists()  # the same file, unpickled carelessly, does run code
    marker.unlink()


def _unsafe_calls(tree: ast.AST) -> list[str]:
    """``torch.load`` without ``weights_only=True`` and any ``pickle``/``dill`` load in a module."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name = f"{owner}.{node.func.attr}"
        safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                   for k in node.keywords)
        if (name == "torch.load" and not safe) or (owner in ("pickle", "dill", "marshal") and "load" in name):
            found.append(f"line {node.lineno}: {name}")
    return found


def test_no_module_unpickles_or_loads_torch_files_unsafely() -> None:
    sources = sorted((REPO / "slimify").rglob("*.py"))
    assert len(sources) > 20
    unsafe = {str(p.relative_to(REPO)): calls for p in sources if (calls := _unsafe_calls(ast.parse(p.read_text())))}
    assert unsafe == {}
    assert _unsafe_calls(ast.parse("import torch\ntorch.load(f)\npickle.loads(b)")) == ["line 2: torch.load",
                                                                                      "line 3: pickle.loads"]
