"""Forward code that caches a tensor derived from parameters (timm's ``attention_bias_cache``):
after a switch, eval mode must compute the cached tensor again at the new width, analysis must see
how it is computed (not a cached constant), and the model's own cache objects survive analysis."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimify
from slimify.analysis.stages import analyze_model
from slimify.rules import MODULE_RULES
from slimify.rules.caches import cache_attrs, per_width_cache
from slimify.rules.notrace import trace_through

ORDER = (1.0, 0.5, 0.25, 1.0, 0.75, 0.5)  # switches visited in eval mode, each after another


class CachedBiasAttention(nn.Module):
    """timm's LeViT/EfficientFormer attention in small: a per-head bias gathered from a table,
    kept per device in eval mode and dropped by ``train()``."""

    attention_bias_cache: dict[str, torch.Tensor]

    def __init__(self, dim: int = 32, heads: int = 4, tokens: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.randn(heads, tokens))
        idx = (torch.arange(tokens)[:, None] - torch.arange(tokens)[None, :]).abs()
        self.register_buffer("attention_bias_idxs", idx)
        self.attention_bias_cache = {}

    def train(self, mode: bool = True) -> CachedBiasAttention:
        super().train(mode)
        if self.attention_bias_cache:
            self.attention_bias_cache = {}
        return self

    def get_attention_biases(self, device: torch.device) -> torch.Tensor:
        if self.training:
            return self.attention_biases[:, self.attention_bias_idxs]
        key = str(device)
        if key not in self.attention_bias_cache:
            self.attention_bias_cache[key] = self.attention_biases[:, self.attention_bias_idxs]
        return self.attention_bias_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) * 0.25 + self.get_attention_biases(x.device)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, -1))


class CachedScale(nn.Module):
    """A cache held as a plain tensor attribute (``None`` until filled), declared explicitly."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(dim) + 0.5)
        self.scale_cache = None

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - as timm's
        self.scale_cache = None
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x * self.gamma.exp()
        if self.scale_cache is None:
            self.scale_cache = self.gamma.exp()
        return x * self.scale_cache


per_width_cache(CachedScale, "scale_cache")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 1)
        self.attn = CachedBiasAttention()
        self.scale = CachedScale()
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x).flatten(2).transpose(1, 2)
        h = h + self.attn(h)
        return self.head(self.scale(h).mean(1))


def _converted() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 2, 2)
    with torch.no_grad():
        expected = model(x)  # fills the caches at full width, as a user's evaluation would
    slimify.convert(model, (0.25, 0.5, 0.75, 1.0), divisor=1, example_input=x)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)  # a tensor, not a tracer's proxy
    return model, x


def _check_switches(model: nn.Module, x: torch.Tensor) -> None:
    """Eval mode at each switch equals the exported model and a fresh (train-mode) forward."""
    for w in ORDER:
        slimify.set_width(model, w)
        with torch.no_grad():
            got = model.eval()(x)
            fresh = model.train()(x)  # no dropout or BatchNorm here: train mode computes the same
            model.eval()
            torch.testing.assert_close(got, slimify.export(model, w).eval()(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(got, fresh, rtol=0, atol=1e-6)
        with torch.no_grad():
            model(x)
        assert model.attn.attention_bias_cache["cpu"].shape[0] == model.attn.num_heads
        assert model.scale.scale_cache.shape[0] == model.scale.gamma.shape[0]


def test_cache_follows_the_switch() -> None:
    model, x = _converted()
    with slimify.width(model, 0.5):
        assert model.attn.num_heads == 2
    _check_switches(model, x)


def test_notrace_module_cache_is_not_a_constant(request: pytest.FixtureRequest) -> None:
    """Traced on its own from a filled cache (TinyViT's blocks): the heads still slim."""
    MODULE_RULES.add(CachedBiasAttention, trace_through)
    request.addfinalizer(lambda: MODULE_RULES.unregister(CachedBiasAttention))
    model, x = _converted()
    with slimify.width(model, 0.5):
        assert model.attn.num_heads == 2
    _check_switches(model, x)


def test_training_then_eval_sees_new_parameters() -> None:
    model, x = _converted()
    slimify.set_width(model, 0.5)
    with torch.no_grad():
        model(x)  # cache filled at 0.5
        model.train()
        model.attn.attention_biases.add_(1.0)
        model.scale.gamma.add_(0.1)
        model.scale.scale_cache = None  # its module's own invalidation
        model.eval()
        torch.testing.assert_close(model(x), slimify.export(model, 0.5).eval()(x), rtol=0, atol=1e-6)


def test_analysis_keeps_the_models_caches() -> None:
    model, x = Net().eval(), torch.randn(2, 3, 2, 2)
    with torch.no_grad():
        model(x)
    cache, table = model.attn.attention_bias_cache, model.attn.attention_bias_cache["cpu"]
    analyze_model(model, divisor=1, example_input=x)
    assert model.attn.attention_bias_cache is cache and list(cache) == ["cpu"] and cache["cpu"] is table
    assert cache_attrs(model.attn) == ("attention_bias_cache",) and cache_attrs(model.scale) == ("scale_cache",)


def test_dtype_change_reaches_every_cache() -> None:
    """``.double()`` swaps parameters' storage without a version bump: served copies follow it."""
    model, x = _converted()
    slimify.set_width(model, 0.5)
    with torch.no_grad():
        model(x)  # inference copies and caches filled in float32
        model.double()
        got = model(x.double())
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, slimify.export(model, 0.5).eval()(x.double()), rtol=0, atol=1e-12)
