"""Models whose code symbolic tracing cannot follow (control flow on sizes, decorated ``**kwargs``
forwards, several inputs, dict outputs, transformers): they trace with concrete values, every
channel is analysed, full width is exact, every switch keeps the output's form, export equals the
slimmable width. A representative handful of ``benchmarks/foreign.py``'s models, kept small."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import slimify
from benchmarks.foreign import flatten
from benchmarks.foreign_models import DecoratedKwargs, Siamese, SizeBranch
from slimify.analysis.trace import SlimifyTracer, trace
from slimify.errors import SlimifyError
from slimify.rules import find_module_rule

SWITCHES = (0.25, 0.5, 1.0)


def _check(model: nn.Module, args: tuple, kwargs: dict | None = None, **convert_kwargs) -> nn.Module:
    """Convert; full width exact on every output tensor; every switch keeps the output's form;
    export at 0.5 equals the slimmable width 0.5. Returns the converted model."""
    kwargs = kwargs or {}
    model.eval()
    with torch.no_grad():
        expected = flatten(model(*args, **kwargs))
    slimify.convert(model, SWITCHES, example_input=args[0] if len(args) == 1 else args,
                    example_kwargs=kwargs or None, **convert_kwargs)
    with torch.no_grad():
        got = flatten(model(*args, **kwargs))
    assert [p for p, _ in got] == [p for p, _ in expected]
    for (_, a), (_, b) in zip(expected, got):
        if isinstance(a, torch.Tensor):
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * a.abs().max()
    for w in SWITCHES:
        with slimify.width(model, w), torch.no_grad():
            out = flatten(model(*args, **kwargs))
        assert [(p, None if v is None else getattr(v, "shape", v)) for p, v in out] == \
               [(p, None if v is None else getattr(v, "shape", v)) for p, v in expected]
    with slimify.width(model, 0.5), torch.no_grad():
        narrow = flatten(model(*args, **kwargs))
    plain = slimify.export(model, 0.5)
    with torch.no_grad():
        exported = flatten(plain(*args, **kwargs))
    for (_, a), (_, b) in zip(narrow, exported):
        if isinstance(a, torch.Tensor):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    return model


def _slimming(model: nn.Module) -> list:
    """Groups that slim (not fixed)."""
    rep = slimify.report(model)
    fixed = {id(g) for g in rep.fixed}
    return [g for g in rep.groups if id(g) not in fixed]


def _fixed_reasons(model: nn.Module) -> list[str]:
    return [g.reason for g in slimify.report(model).fixed
            if g.reason != "model input channels" and not g.reason.startswith("model output")]


def test_control_flow_on_sizes_and_dtypes_traces_with_values():
    torch.manual_seed(0)
    model = SizeBranch()
    x = torch.randn(1, 3, 150, 150)  # padded to a multiple of the patch, then pooled (x.shape[-1] > 32)
    with pytest.raises(torch.fx.proxy.TraceError):
        SlimifyTracer(lambda m: find_module_rule(m) is not None).trace(model)  # symbolic tracing fails
    _check(model, (x,))
    assert _fixed_reasons(model) == []  # nothing became an opaque leaf
    assert len(_slimming(model)) >= 3


def test_two_inputs():
    torch.manual_seed(0)
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    model = _check(Siamese(width=16), (a, b))
    assert _fixed_reasons(model) == []
    record = slimify.state.get_state(model).record
    assert [s["shape"] for s in record.example_inputs["args"]] == [[1, 3, 32, 32], [1, 3, 32, 32]]


def test_decorated_forward_with_kwargs_and_dict_output():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    model = _check(DecoratedKwargs(width=16), (x,), {"temperature": 2.0, "mask": torch.ones(1, 1, 16, 16)})
    assert _fixed_reasons(model) == []
    with slimify.width(model, 0.25), torch.no_grad():
        out = model(x, temperature=2.0, mask=torch.ones(1, 1, 16, 16))
    assert set(out) == {"logits", "probs"} and out["logits"].shape == (1, 10)  # outputs keep their size


class _Heads(nn.Module):
    """Attention whose output shape is a computed tuple with a literal (transformers' PVTv2):
    ``ctx.view(ctx.size()[:-2] + (self.all_head_size,))``."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.num_attention_heads, self.head_size = heads, dim // heads
        self.all_head_size = dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new_shape = x.size()[:-1] + (3, self.num_attention_heads, self.head_size)
        q, k, v = self.qkv(x).view(*new_shape).permute(2, 0, 3, 1, 4).unbind(0)
        ctx = F.scaled_dot_product_attention(q, k, v).permute(0, 2, 1, 3).contiguous()
        return x + self.proj(ctx.view(ctx.size()[:-2] + (self.all_head_size,)))


class _HeadsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 32, 4, stride=4)
        self.blocks = nn.Sequential(_Heads(), _Heads())
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x).flatten(2).transpose(1, 2)).mean(1))


def test_literal_in_a_computed_shape_tuple_follows_the_width():
    torch.manual_seed(0)
    model = _check(_HeadsNet(), (torch.randn(1, 3, 16, 16),))
    assert _fixed_reasons(model) == []
    with slimify.width(model, 0.5):
        assert model.blocks[0].all_head_size == 16 and model.blocks[0].num_attention_heads == 1


def test_symbolic_trace_unchanged_where_it_works():
    """A model fx traces symbolically is traced exactly as before (no concrete pass, no leaves)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    has_rule = lambda m: find_module_rule(m) is not None  # noqa: E731
    traced = trace(model, torch.randn(1, 3, 16, 16), has_rule)
    plain = SlimifyTracer(has_rule).trace(model)
    assert [n.format_node() for n in traced.graph.nodes] == [n.format_node() for n in plain.nodes]
    assert traced.leaves == frozenset()


def test_notrace_class_registered_after_import():
    """A class registered with timm's no-trace list after ``import slimify`` is traced on its own
    and analysed, exactly like one registered before (it used to become an opaque leaf)."""
    from timm.layers import _fx as timm_fx

    class ShapeGate(nn.Module):  # branches on a size: fx cannot trace it symbolically
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] % 2:
                x = F.pad(x, (0, 1, 0, 1))
            return x + self.conv(x)

    timm_fx.register_notrace_module(ShapeGate)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 3), ShapeGate(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(16, 4))
        _check(model, (torch.randn(1, 3, 15, 15),))
        assert _fixed_reasons(model) == []
        with slimify.width(model, 0.5):
            assert model[1].conv.weight.shape[:2] == (8, 8)
    finally:
        timm_fx._leaf_modules.discard(ShapeGate)


def test_model_that_cannot_run_on_the_example_names_the_line():
    model = SizeBranch().eval()
    with pytest.raises(SlimifyError, match=r"expected 3 channels, got 4 \(at .*foreign_models\.py:\d+, in forward\)"):
        slimify.convert(model, example_input=torch.randn(1, 4, 32, 32))
    assert not slimify.is_slimmable(model)


def test_save_load_keep_several_inputs(tmp_path, monkeypatch):
    from slimify.store import sources as models
    monkeypatch.setitem(models.EXAMPLES, "siamese_test", lambda: Siamese(width=16))
    torch.manual_seed(0)
    model = models.create("slimify:siamese_test").eval()
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    slimify.convert(model, SWITCHES, example_input=(a, b))
    path = slimify.save(model, tmp_path / "s.slim")
    loaded = slimify.load(path)
    for w in SWITCHES:
        with slimify.width(model, w), slimify.width(loaded, w), torch.no_grad():
            assert torch.equal(model(a, b), loaded(a, b))


def test_transformers_model_from_config():
    transformers = pytest.importorskip("transformers")  # the optional ``bench`` extra
    torch.manual_seed(0)
    config = transformers.PvtV2Config(hidden_sizes=[16, 32, 32, 64], num_attention_heads=[1, 2, 2, 4],
                                      depths=[1, 1, 1, 1], num_labels=3, image_size=64)
    model = transformers.PvtV2ForImageClassification(config)
    _check(model, (torch.randn(1, 3, 64, 64),))
    assert len(_slimming(model)) >= 8  # every stage's attention and MLP slim


class _CheckedStage(nn.Module):
    """transformers' patch embeddings check their input's channels on every stage."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.num_channels = channels
        self.conv = nn.Conv2d(channels, 2 * channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.num_channels:
            raise ValueError("Make sure that the channel dimension of the pixel values match the configuration")
        return self.conv(x)


def test_size_compared_in_a_branch_follows_the_width():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), _CheckedStage(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4))
    _check(model, (torch.randn(1, 3, 16, 16),))
    assert _fixed_reasons(model) == []
    with slimify.width(model, 0.5):
        assert model[1].num_channels == 8


class _KeywordOnly(nn.Module):
    """A required keyword-only tensor input: the self-check must call ``model(x, gate=g)`` too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 16, 3), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, *, gate: torch.Tensor) -> torch.Tensor:
        return self.head((self.conv(x) * gate).mean(dim=(2, 3)))


def test_self_check_runs_with_keyword_inputs(monkeypatch):
    from slimify.check import skeleton
    calls = []
    run = skeleton.Runner._run
    monkeypatch.setattr(skeleton.Runner, "_run", lambda self, net: calls.append(dict(self.inputs.kwargs)) or run(self, net))
    x, gate = torch.randn(1, 3, 8, 8), torch.rand(1, 1, 6, 6)
    model = _check(_KeywordOnly(), (x,), {"gate": gate})
    assert calls and all(set(c) == {"gate"} for c in calls)  # every switch ran with the keyword input
    assert _slimming(model)
