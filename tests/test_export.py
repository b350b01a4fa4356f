"""Export (issue 7): every switch of a representative subset exports to a plain model that computes
what the slimmable model computes, with exactly the parameters it uses, and no slimify left in
it; torch.export and ONNX agree with PyTorch."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import slimify
from slimify.deploy.extract import active_params, export, to_onnx, to_torch_export
from slimify.errors import SlimifyError
from slimify.store.sources import TinyNet
from tests.test_zoo import DIVISOR
from tests.zoo import ZOO, build

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64
SUBSET = ["tv:resnet18", "tv:mobilenet_v2", "resnet10t", "dpn48b", "mixnet_s", "convnext_atto", "ghostnet_050"]
_CONVERTED: dict[str, nn.Module] = {}


def converted(name: str, size: int = SIZE) -> nn.Module:
    """``name`` from the zoo, random weights (BN statistics too), converted; cached per module."""
    key = f"{name}@{size}"
    if key not in _CONVERTED:
        model = build(name)
        _randomize_bn(model)
        slimify.convert(model, divisor=DIVISOR.get(name, 8), example_input=torch.randn(1, 3, size, size))
        _CONVERTED[key] = model.eval()
    return _CONVERTED[key]


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial statistics, so that using the wrong BN tensors changes the output."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)


def _slimify_parts(model: nn.Module) -> list[str]:
    found = [f"{p}: {type(m).__module__}" for p, m in model.named_modules()
             if type(m).__module__.startswith("slimify") or "_slimify" in m.__dict__ or "_slimify_state" in m.__dict__]
    found += [f"{p}: hook" for p, m in model.named_modules() for hooks in
              (m._load_state_dict_pre_hooks, m._forward_pre_hooks, m._forward_hooks) for h in hooks.values()
              if (getattr(getattr(h, "hook", h), "__module__", "") or "").startswith("slimify")]
    return found


@pytest.mark.parametrize("name", SUBSET)
def test_export_matches_every_switch(name: str) -> None:
    model = converted(name)
    x = torch.randn(2, 3, SIZE, SIZE)
    previous_params = [p.clone() for p in model.parameters()]
    for w in slimify.switches(model):
        with torch.no_grad(), slimify.width(model, w):
            want = model(x)
        plain = export(model, w)
        with torch.no_grad():
            got = plain.eval()(x)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), f"width {w}"
        counted = sum(p.numel() for p in plain.parameters())
        assert counted == active_params(model, w), f"width {w}: {counted} != {active_params(model, w)}"
        assert type(plain) is type(model).__dict__.get("__slimify_base__", type(model))
        assert not _slimify_parts(plain)
        assert all(p.is_contiguous() for p in plain.parameters())
    assert slimify.get_width(model) == 1.0
    assert all(torch.equal(a, b) for a, b in zip(previous_params, model.parameters()))


def test_export_really_narrows_and_keeps_training_state() -> None:
    model = converted("tv:resnet18")
    full, half = export(model, 1.0), export(model, 0.5)
    assert full.conv1.out_channels == 64 and half.conv1.out_channels == 32
    assert half.conv1.weight.shape == (32, 3, 7, 7) and half.bn1.running_mean.shape == (32,)
    assert half.layer1[0].conv1.in_channels == 32 and half.fc.in_features == 256
    assert torch.equal(half.bn1.running_var, model.bn1.slim_bn[1].running_var)  # the switch's private BN
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in half.parameters())
    half.train()(torch.randn(2, 3, SIZE, SIZE)).sum().backward()  # a normal trainable model
    assert half.conv1.weight.grad is not None and model.conv1.weight.grad is None


def test_exported_model_runs_without_slimify(tmp_path) -> None:
    model = converted("tv:mobilenet_v2")
    plain = export(model, 0.5).eval()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        want = plain(x)
    torch.save(plain, tmp_path / "plain.pt")
    torch.save({"x": x, "y": want}, tmp_path / "io.pt")
    code = ("import sys, torch\n"
            f"m = torch.load({str(tmp_path / 'plain.pt')!r}, weights_only=False)\n"
            f"d = torch.load({str(tmp_path / 'io.pt')!r})\n"
            "assert not any(k.startswith('slimify') for k in sys.modules), 'slimify was imported'\n"
            "with torch.no_grad(): y = m(d['x'])\n"
            "assert torch.allclose(y, d['y'], atol=1e-5), (y - d['y']).abs().max()\n"
            "print('ok', type(m).__module__)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok torchvision.models.mobilenetv2")


@pytest.mark.parametrize("name", ["tv:resnet18", "resnet10t", "tv:mobilenet_v2"])
def test_torch_export_and_onnx_agree(name: str, tmp_path) -> None:
    import onnxruntime as ort

    model = converted(name)
    x = torch.randn(3, 3, SIZE, SIZE)  # another batch size than the export example: dynamic batch
    with torch.no_grad(), slimify.width(model, 0.5):
        want = model(x)
    pt2 = to_torch_export(model, 0.5, tmp_path / "m.pt2", example=x[:1])
    with torch.no_grad():
        got = torch.export.load(str(pt2)).module()(x[:1])
    assert (got - want[:1]).abs().max() <= 1e-4 * want.abs().max()
    onnx_path = to_onnx(model, 0.5, tmp_path / "m.onnx", example=x[:1])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"input": x.numpy()})
    assert abs(ort_out - want.numpy()).max() <= 1e-4 * float(want.abs().max())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt2"]  # no temp files left


def test_export_refuses_bad_input(tmp_path) -> None:
    model = slimify.convert(TinyNet(), (0.5, 1.0), example_input=torch.randn(1, 3, 32, 32))
    with pytest.raises(SlimifyError, match="outside this model's range"):
        export(model, 0.3)
    with pytest.raises(SlimifyError, match="not a slimmable model"):
        export(TinyNet(), 0.5)
    (tmp_path / "m.onnx").write_text("keep me")
    with pytest.raises(SlimifyError, match="already exists"):
        to_onnx(model, 0.5, tmp_path / "m.onnx", example=torch.randn(1, 3, 32, 32))
    assert (tmp_path / "m.onnx").read_text() == "keep me"
    with pytest.raises(SlimifyError, match="does not exist"):
        to_torch_export(model, 0.5, tmp_path / "no" / "m.pt2", example=torch.randn(1, 3, 32, 32))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_export_matches_whole_zoo(name: str) -> None:
    """Every model of the test list, every switch, at its test size (about a minute on 2 cores;
    ``-m 'not slow'`` skips it)."""
    size = ZOO[name]
    model = converted(name, size)
    x = torch.randn(1, 3, size, size)
    for w in slimify.switches(model):
        with torch.no_grad(), slimify.width(model, w):
            want = model(x)
        plain = export(model, w).eval()
        with torch.no_grad():
            got = plain(x)
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), f"width {w}"
        assert sum(p.numel() for p in plain.parameters()) == active_params(model, w)
    _CONVERTED.pop(f"{name}@{size}")
