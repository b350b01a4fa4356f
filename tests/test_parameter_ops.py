"""Ops that are layers in disguise (issue 24, classes 4 and 5): ``x @ self.proj`` with a parameter is
a linear layer, ``F.multi_head_attention_forward`` called directly is multi-head attention; and the
report accounts for every channel that stays at full width at width 0.5 (reason and line), on the
golden models and on these."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimify
from tests.golden.models import GOLDEN
from tests.test_trace_parts import _converted


class ProjTower(nn.Module):
    """open_clip's ViT tower in six lines: a linear, a residual MLP, then ``x @ self.proj``."""

    def __init__(self, transposed: bool = False) -> None:
        super().__init__()
        self.transposed = transposed
        self.fc = nn.Linear(16, 64)
        self.mlp = nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
        self.proj = nn.Parameter(torch.randn(32, 64) * 0.1 if transposed else torch.randn(64, 32) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        h = h + self.mlp(h)
        return h @ self.proj.t() if self.transposed else h @ self.proj


class LeftProj(nn.Module):
    """``self.proj @ x``: the parameter's rows are the output channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 48, 1)
        self.proj = nn.Parameter(torch.randn(24, 48) * 0.1)
        self.head = nn.Conv1d(24, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.proj @ torch.relu(self.conv(x))))


class AttentionPool(nn.Module):
    """open_clip's ModifiedResNet attention pool: ``F.multi_head_attention_forward`` with separate
    q/k/v weights and their biases concatenated."""

    def __init__(self, dim: int = 64, heads: int = 4, out: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.positional_embedding = nn.Parameter(torch.randn(17, dim) / dim ** 0.5)
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out)
        self.num_heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x)).flatten(start_dim=2).permute(2, 0, 1)  # NCHW -> (HW)NC
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :].to(x.dtype)
        x, _ = F.multi_head_attention_forward(
            query=x, key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=self.num_heads,
            q_proj_weight=self.q_proj.weight, k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight,
            in_proj_weight=None, in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True, training=self.training, need_weights=False)
        return x[0]


def _group(model: nn.Module, origin: str):
    return next(g for g in slimify.report(model).groups if any(o.startswith(origin) for o in g.origins))


def test_matmul_with_a_parameter_is_a_linear_layer() -> None:
    model = _converted(ProjTower(), torch.randn(2, 16))
    stream = _group(model, "fc")
    assert not stream.fixed and stream.unit == 1 and stream.channels[1] == 32, stream
    assert _group(model, "proj").fixed  # the output keeps its size, like logits


def test_parameter_on_the_left_is_a_linear_layer_too() -> None:
    model = _converted(LeftProj(), torch.randn(1, 3, 10))
    assert _group(model, "conv").channels[1] == 24
    assert _group(model, "proj").channels[1] == 12  # the automatic divisor halves 24 exactly


def test_functional_multi_head_attention_slims_by_heads() -> None:
    model = _converted(AttentionPool(), torch.randn(1, 3, 4, 4))
    heads = _group(model, "q_proj")  # q, k and v of one head (3 x 16 channels) are one unit: 1 to 4 heads
    assert not heads.fixed and heads.unit == 48 and heads.channels == [48, 96, 144, 192], heads
    assert "stem (output channels)" in heads.origins  # the input is tied to the heads and slims with them


def _stays_full(model: nn.Module) -> list:
    report = slimify.report(model)
    at = min(range(len(report.switches)), key=lambda i: abs(report.switches[i] - 0.5))
    return [g for g in report.groups if g.channels[at] >= g.size]


def _accounted(model: nn.Module) -> None:
    """Every group kept at full size at width 0.5 is listed as fixed, with its reason; the table
    never says "0 fixed" while one does."""
    report = slimify.report(model)
    full = _stays_full(model)
    for g in full:
        assert g in report.fixed and (g.reason or g.full), g
    if full:
        assert " 0 fixed" not in report.table()
        for g in full:
            assert (g.reason or g.full) in report.table()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_report_accounts_for_full_width_golden(name: str) -> None:
    model = GOLDEN[name]().eval()
    slimify.convert(model, example_input=torch.randn(1, 3, 16, 16))
    _accounted(model)


def test_report_names_the_line_that_made_a_group_one_unit() -> None:
    """``x @ self.proj.t()``: a computed weight is contracted like an activation, so the stream
    becomes one unit of 64 channels; the report says so with the line, never "0 fixed"."""
    model = ProjTower(transposed=True).eval()
    slimify.convert(model, example_input=torch.randn(2, 16))
    stream = _group(model, "fc")
    assert stream.full and stream in slimify.report(model).fixed
    assert "one unit of 64 channels" in stream.full and "test_parameter_ops.py, line" in stream.full
    _accounted(model)


@pytest.mark.parametrize("make,x", [(ProjTower, (2, 16)), (LeftProj, (1, 3, 10)), (AttentionPool, (1, 3, 4, 4))])
def test_report_accounts_for_full_width(make, x) -> None:
    model = make().eval()
    slimify.convert(model, example_input=torch.randn(*x))
    _accounted(model)


class DenseHead(nn.Module):
    """A detector-like head: class scores for 6 anchors x 91 classes on every pixel carry most MACs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.body = nn.Conv2d(32, 32, 3, padding=1)
        self.cls = nn.Conv2d(32, 6 * 91, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(torch.relu(self.body(torch.relu(self.stem(x)))))


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def test_report_says_when_outputs_keep_width_half_above_the_bound() -> None:
    x = torch.randn(1, 3, 16, 16)
    model = DenseHead().eval()
    slimify.convert(model, example_input=x)
    line = slimify.report(model).design_floor
    assert line and line in slimify.report(model).table()
    floor = float(line.split("at least ")[1].split(" ")[0])
    full = _macs(model, x)
    with slimify.width(model, 0.5):
        measured = _macs(model, x) / full
    assert measured > 0.35 and abs(measured - floor) < 0.02, (measured, line)
    assert "94% of them" in line


@pytest.mark.parametrize("name", ["residual", "attention", "flatten_linear"])
def test_no_design_line_where_the_bound_is_reachable(name: str) -> None:
    model = GOLDEN[name]().eval()
    slimify.convert(model, example_input=torch.randn(1, 3, 16, 16))
    assert slimify.report(model).design_floor is None


class FunctionalNorms(nn.Module):
    """Model code calling ``F.batch_norm`` / ``F.instance_norm`` with its own tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.weight, self.bias = nn.Parameter(torch.rand(32) + 0.5), nn.Parameter(torch.randn(32))
        self.register_buffer("running_mean", torch.randn(32))
        self.register_buffer("running_var", torch.rand(32) + 0.5)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.scale = nn.Parameter(torch.rand(32) + 0.5)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(self.conv1(x), self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, 1e-5)
        x = F.instance_norm(self.conv2(torch.relu(x)), weight=self.scale, bias=None)
        return self.head(torch.relu(x))


def test_functional_norms_serve_their_tensors_narrow() -> None:
    model = _converted(FunctionalNorms(), torch.randn(1, 3, 8, 8))
    assert _group(model, "conv1").channels[1] == 16 and _group(model, "conv2").channels[1] == 16
    with slimify.width(model, 0.5):
        assert model.running_mean.shape == (16,) and model.scale.shape == (16,)
