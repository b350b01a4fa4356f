"""FastMeta (slimify/analysis/metarun.py) lays its outputs out as the real ops do: a ``view`` that
works on the real output must work on meta, or the shape pass and the self-check fall back to a
slow real run (timm maxvit's window partition did, on every conversion)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimify.analysis.meta_layers import shape_call
from slimify.analysis.metarun import FastMeta

CL = torch.channels_last


def _layout(t: torch.Tensor) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape and the strides of dims longer than 1 (a size-1 dim's stride means nothing)."""
    return tuple(t.shape), tuple(s for n, s in zip(t.shape, t.stride()) if n > 1)


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 6, 5, generator=g)
    return {"x": x, "cl": x.to(memory_format=CL), "cl_slice": x.to(memory_format=CL)[:, :4],
            "perm": torch.randn(2, 6, 5, 8, generator=g).permute(0, 3, 1, 2), "w": torch.randn(4, 8, 3, 3, generator=g),
            "seq": torch.randn(2, 7, 8, generator=g).transpose(1, 2), "lw": torch.randn(8, 7, generator=g),
            "q": torch.randn(2, 7, 3, 4, generator=g).transpose(1, 2), "mha_in": torch.randn(24, 8, generator=g),
            "mha_out": torch.randn(5, 8, generator=g)}


OPS = {
    "add of a permuted tensor": lambda t: t["perm"] + 1.0,
    "gelu of a channels-last slice": lambda t: F.gelu(t["cl_slice"]),
    "conv of a channels-last slice": lambda t: F.conv2d(t["cl_slice"], t["w"][:, :4]),
    "conv of a permuted tensor": lambda t: F.conv2d(t["perm"], t["w"]),
    "batch norm of channels-last": lambda t: F.batch_norm(t["cl"], t["lw"][:, 0], t["lw"][:, 1]),
    "layer norm of a permuted tensor": lambda t: F.layer_norm(t["perm"], (6, 5)),
    "linear of a transposed sequence": lambda t: F.linear(t["seq"], t["lw"]),
    "softmax of a transposed sequence": lambda t: t["seq"].softmax(-1),
    "contiguous": lambda t: t["perm"].contiguous(),
    "cat of channels-last": lambda t: torch.cat([t["cl"], t["cl"]], 1),
    "cat of mixed layouts": lambda t: torch.cat([t["cl"], t["x"]], 1),
    "attention on a transposed query": lambda t: F.scaled_dot_product_attention(t["q"], t["q"], t["q"]),
    "matmul of transposed": lambda t: t["seq"] @ t["seq"].mT,
    "adaptive pool of channels-last": lambda t: F.adaptive_avg_pool2d(t["cl"], 2),
    "interpolate channels-last": lambda t: F.interpolate(t["cl"], scale_factor=1.5, mode="bilinear"),
    "interpolate by size": lambda t: F.interpolate(t["x"], size=(3, 7)),
    "interpolate 1-d": lambda t: F.interpolate(t["seq"], scale_factor=0.5, mode="linear"),
    "rms norm of a permuted tensor": lambda t: F.rms_norm(t["perm"], (5,), t["lw"][:5, 0]),
    "multi-head attention": lambda t: F.multi_head_attention_forward(
        t["seq"].permute(2, 0, 1), t["seq"].permute(2, 0, 1), t["seq"].permute(2, 0, 1), 8, 2, t["mha_in"],
        None, None, None, False, 0.0, t["mha_out"], None, training=False, need_weights=True)[1],
    "multi-head attention output": lambda t: F.multi_head_attention_forward(
        t["seq"].permute(2, 0, 1), t["seq"].permute(2, 0, 1), t["seq"].permute(2, 0, 1), 8, 2, t["mha_in"],
        None, None, None, False, 0.0, t["mha_out"], None, training=False, need_weights=False)[0],
    "roll along dims": lambda t: torch.roll(t["perm"], (1, -2), (2, 3)), "roll flat": lambda t: t["perm"].roll(3),
    "roll of a slice": lambda t: t["cl_slice"].roll(1, 1),
    "masked_fill": lambda t: t["perm"].masked_fill(t["x"][0, 0] > 0, -100.0),
    "masked_fill in place": lambda t: t["x"].clone().masked_fill_(t["x"][:, :1] > 0, 0.0),
    "addcmul of channels-last (GRN)": lambda t: torch.addcmul(t["lw"][:, 0].view(1, 8, 1, 1), t["lw"][:, 1].view(
        1, 8, 1, 1), t["cl"], value=0.5),
    "addcmul of a permuted tensor": lambda t: t["perm"].addcmul(t["perm"], t["x"][:1, :1]),
    "addcdiv in place": lambda t: t["x"].clone().addcdiv_(t["x"][:, :1], t["x"][:1] + 3),
    "norm over dims of channels-last (GRN)": lambda t: t["cl"].permute(0, 2, 3, 1).norm(p=2, dim=(1, 2), keepdim=True),
    "norm of a permuted tensor": lambda t: torch.norm(t["perm"], 2, 1),
    "vector_norm": lambda t: torch.linalg.vector_norm(t["x"], ord=2, dim=(-1, -2)),
    "new_empty": lambda t: t["perm"].new_empty((3, 2)), "new_empty of sizes": lambda t: t["x"].new_empty(4, 1, 2),
}


@pytest.mark.parametrize("name", list(OPS))
def test_layout_as_the_real_op(name: str) -> None:
    real = _inputs()
    want = OPS[name](real)
    meta = {k: v.to("meta") for k, v in real.items()}  # .to keeps the strides
    with FastMeta():
        got = OPS[name](meta)
    assert got.is_meta and got.dtype == want.dtype
    assert _layout(got) == _layout(want)


@pytest.mark.parametrize("op", [
    lambda t: F.rms_norm(t["x"], (6,)), lambda t: F.rms_norm(t["x"], (5,), t["lw"][:4, 0]),
    lambda t: torch.roll(t["x"], (1, 2), (2,)), lambda t: torch.addcmul(t["x"], t["x"][:, :4], t["x"]),
    lambda t: t["x"][:, :1].clone().addcmul_(t["x"], t["x"]), lambda t: t["x"].masked_fill(t["x"][0, :, :, :4] > 0, 0.0),
    lambda t: F.multi_head_attention_forward(t["seq"].permute(2, 0, 1), t["seq"].permute(2, 0, 1), t["seq"].permute(
        2, 0, 1), 8, 2, t["mha_in"][:20], None, None, None, False, 0.0, t["mha_out"], None, training=False),
])
def test_raises_where_the_op_does(op) -> None:
    real = _inputs()
    with pytest.raises(RuntimeError):
        op(real)
    with pytest.raises(RuntimeError), FastMeta():
        op({k: v.to("meta") for k, v in real.items()})


def test_maxvit_window_partition_runs_on_meta() -> None:
    """The view that failed: layer norm of a permuted tensor, then window partition by ``view``."""
    x = torch.randn(1, 16, 8, 8).permute(0, 2, 3, 1)

    def partition(t: torch.Tensor) -> torch.Tensor:
        t = F.layer_norm(t, (16,))
        return t.view(1, 2, 4, 2, 4, 16).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, 4, 4, 16)

    with FastMeta():
        got = partition(x.to("meta"))
    assert got.shape == partition(x).shape


def _modules() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    from timm.layers import BatchNormAct2d
    x = torch.randn(2, 8, 6, 5)
    return {
        "conv": (nn.Conv2d(8, 4, 3, stride=2, padding=1, groups=2), x),
        "conv same": (nn.Conv2d(8, 8, 3, padding="same", groups=8), x.to(memory_format=CL)),
        "conv1d": (nn.Conv1d(8, 3, 2, dilation=2), x[..., 0]),
        "linear": (nn.Linear(5, 7), x),
        "batch norm": (nn.BatchNorm2d(8), x.to(memory_format=CL)),
        "batch norm 1d": (nn.BatchNorm1d(8), x[..., 0, 0]),
        "timm batch norm act": (BatchNormAct2d(8, act_layer=nn.SiLU), x),
        "relu in place": (nn.ReLU(inplace=True), x), "gelu": (nn.GELU(), x.permute(0, 2, 3, 1)),
        "dropout": (nn.Dropout(0.3), x), "identity": (nn.Identity(), x),
    }


@pytest.mark.parametrize("name", list(_modules()))
def test_module_shortcut_gives_the_real_output_layout(name: str) -> None:
    module, x = _modules()[name]
    module.eval()
    want = module(x.clone(memory_format=torch.preserve_format))
    got = shape_call(module.to("meta"), type(module), x.to("meta"))
    assert got is not None and got.is_meta and _layout(got) == _layout(want)


@pytest.mark.parametrize("name,x,error", [
    ("conv", torch.randn(2, 6, 6, 5), RuntimeError), ("linear", torch.randn(2, 8, 6, 4), RuntimeError),
    ("batch norm", torch.randn(2, 7, 6, 5), RuntimeError), ("batch norm", torch.randn(2, 8, 6), ValueError),
    ("timm batch norm act", torch.randn(2, 8, 6), AssertionError),
])
def test_module_shortcut_raises_where_the_forward_does(name: str, x: torch.Tensor, error: type) -> None:
    module, _ = _modules()[name]
    module.eval()
    with pytest.raises(error):
        module(x)
    with pytest.raises(error):
        shape_call(module.to("meta"), type(module), x.to("meta"))


def test_self_check_runs_the_shortcuts_on_the_skeleton() -> None:
    """The skeleton's torch layers take the shortcut (no torch-function call per module) and a
    model whose own forward is an attribute keeps it."""
    from slimify.analysis.meta_layers import _module_forwards
    from slimify.check.skeleton import _shape_forwards, skeleton
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model[3].forward = model[3]._conv_forward.__get__(model[3])  # its own forward attribute
    net = skeleton(model, meta=True)
    _shape_forwards(net)
    own = vars(net[3])["forward"]
    assert all("forward" in vars(m) for m in net[:3]) and own.__func__ is nn.Conv2d._conv_forward
    assert type(net[0]) in _module_forwards() and "forward" not in vars(model[0])
