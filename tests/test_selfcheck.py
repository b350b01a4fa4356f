"""The self-check (slimify/check/selfcheck.py): every switch runs before convert returns; a missed
constraint fixes its group with the line in the reason; a failure leaves the model untouched."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

import slimify
from slimify import SlimifyError
from slimify.analysis.metarun import FastMeta
from slimify.analysis.space import ChannelSpace, Count
from slimify.analysis.stages import _plan
from slimify.check.skeleton import skeleton

SWITCHES = (0.25, 0.5, 0.75, 1.0)


class AttributeBranch(nn.Module):
    """transformers' Hiera layer: a projection runs only when two plain int attributes differ, a
    branch no trace records. ``dim`` follows the input's width (read as a size), ``dim_out`` keeps
    its value: at width 0.5 both are 16, the projection is skipped and the residual add fails.
    (A merged width baked into a computed shape tuple, the example here before, is now followed by
    the analysis itself: ``rules/literal_sizes.py: expand_sizes``.)"""

    def __init__(self, dim: int = 32, dim_out: int = 16) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.proj, self.fc = nn.Linear(dim, dim_out), nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        y = self.fc(x.view(b, n, self.dim))
        if self.dim != self.dim_out:
            x = self.proj(x)
        return x + y  # the line the report must name


class BranchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.attn, self.head = nn.Conv2d(3, 32, 3, 2, 1), AttributeBranch(), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.attn(x).mean(1))


def test_missed_constraint_is_fixed_with_the_line() -> None:
    model, x = BranchNet().eval(), torch.randn(2, 3, 16, 16)
    expected = model(x)
    slimify.convert(model, SWITCHES, example_input=x[:1])
    report = slimify.report(model)
    reasons = [g.reason for g in report.fixed if g.reason.startswith("self-check")]
    assert len(reasons) == 1 and "test_selfcheck.py" in reasons[0] and "return x + y" in reasons[0]
    assert report.slimmable and report.slimmable[0].channels[0] < 16  # the block's output still slims
    torch.testing.assert_close(model(x), expected)
    for w in SWITCHES:
        with slimify.width(model, w):
            assert model(x).shape == expected.shape


class Blocks(nn.Module):
    """Three such blocks side by side: one fix each, all found."""

    def __init__(self) -> None:
        super().__init__()
        self.stems = nn.ModuleList(nn.Conv2d(3, 32, 3, 2, 1) for _ in range(3))
        self.blocks = nn.ModuleList(AttributeBranch() for _ in range(3))
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [block(stem(x).flatten(2).transpose(1, 2)) for stem, block in zip(self.stems, self.blocks)]
        return self.head(torch.cat(outs, -1).mean(1))


def test_every_missed_constraint_is_found() -> None:
    model, x = Blocks().eval(), torch.randn(1, 3, 16, 16)
    slimify.convert(model, SWITCHES, example_input=x)
    reasons = [g.reason for g in slimify.report(model).fixed if g.reason.startswith("self-check")]
    assert sorted(r.split(" failed in ")[1].split(" ")[0] for r in reasons) == ["blocks.0", "blocks.1", "blocks.2"]
    for w in SWITCHES:
        with slimify.width(model, w):
            model(x)


_CALLS = itertools.count()


class ChangingOutput(nn.Module):
    """Output size changes from call to call: no plan can make the switches agree."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.bn = nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))[:, : 8 + next(_CALLS) % 8]


def test_failure_leaves_model_untouched() -> None:
    model = ChangingOutput().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    with pytest.raises(SlimifyError, match=r"test_selfcheck.py, line \d+.*depend on the data") as info:
        slimify.convert(model, SWITCHES, example_input=torch.randn(1, 3, 8, 8))
    assert "\n" not in str(info.value)
    assert not slimify.is_slimmable(model) and model.training
    assert [type(m) for m in model.modules()] == classes
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert not any(hasattr(m, "slim_bn") or m._forward_hooks for m in model.modules())


def test_model_that_cannot_run_names_the_line() -> None:
    model = BranchNet()
    with pytest.raises(SlimifyError, match=r"does not run on the example input.*(channels|size)") as info:
        slimify.convert(model, example_input=torch.randn(1, 1, 16, 16))
    assert "\n" not in str(info.value) and "test_selfcheck.py" in str(info.value)
    assert not slimify.is_slimmable(model)


def test_other_exceptions_become_one_slimify_error(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise ValueError("boom")

    import sys
    monkeypatch.setattr(sys.modules["slimify.analysis.stages"], "analyze", broken)
    with pytest.raises(SlimifyError, match="ValueError: boom"):
        slimify.convert(nn.Sequential(nn.Conv2d(3, 8, 3)), example_input=torch.randn(1, 3, 8, 8))


def test_empty_piece_gets_a_group_of_its_own() -> None:
    """A size read by forward code (CoaT's per-window conv ``groups``) counting a piece of a group
    that a narrow switch would empty: the piece is cut into its own group, which keeps a channel."""
    space = ChannelSpace()
    ids = space.new_var(8, "conv (output channels)")
    space.mark_seen(ids)
    space.attr("piece", "groups", Count(ids[6:]))
    table, plan = _plan(space, SWITCHES, 1, "net")
    assert all(v >= 1 for v in plan.attrs[("piece", "groups")])
    assert len([g for g in table.groups if not g.fixed]) == 2


def test_coat_lite_mini_runs_every_switch() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("coat_lite_mini", img_size=64).eval()
    x = torch.randn(1, 3, 64, 64)
    slimify.convert(model, SWITCHES, example_input=x)
    assert not [g for g in slimify.report(model).fixed if g.reason.startswith("self-check")]
    with torch.no_grad():
        for w in SWITCHES:
            with slimify.width(model, w):
                assert model(x).shape == (1, 1000)


def test_skeleton_shares_nothing_the_rewrite_changes() -> None:
    model = BranchNet().train()
    model.cache = {}
    copy = skeleton(model, meta=True)
    assert not any(m.training for m in copy.modules()) and all(m.training for m in model.modules())
    copy.cache["x"] = 1
    copy.stem.register_forward_hook(lambda *a: None)
    assert model.cache == {} and not model.stem._forward_hooks
    assert copy.stem.weight.is_meta and not model.stem.weight.is_meta
    assert copy.attn is not model.attn and type(copy.attn) is AttributeBranch


@pytest.mark.parametrize("op", [
    lambda x, w: x + w[:, :3], lambda x, w: torch.nn.functional.conv2d(x, w, groups=2),
    lambda x, w: torch.nn.functional.batch_norm(x, w[0, 0, 0], w[0, 0, 0]),
    lambda x, w: torch.nn.functional.linear(x.flatten(1), w[0, 0]),
    lambda x, w: torch.nn.functional.layer_norm(x, (5,)),
    lambda x, w: torch.nn.functional.group_norm(x, 3),
    lambda x, w: torch.cat([x, w], 1),
    lambda x, w: x @ w, lambda x, w: torch.matmul(x, w[:2]), lambda x, w: torch.bmm(x[0], w[:4, 0]),
    lambda x, w: torch.nn.functional.scaled_dot_product_attention(x, w[:1], w[:1]),
    lambda x, w: torch.nn.functional.scaled_dot_product_attention(x, x[..., :5], x),
    lambda x, w: torch.nn.functional.scaled_dot_product_attention(x, x, x, attn_mask=w[:1, :1, :5, :5] > 0),
    lambda x, w: torch.nn.functional.normalize(x, dim=4),
])
def test_fast_meta_raises_where_the_op_does(op) -> None:
    x, w = torch.randn(1, 4, 6, 6), torch.randn(8, 4, 3, 3)
    with pytest.raises((RuntimeError, IndexError)):
        op(x, w)
    with pytest.raises((RuntimeError, IndexError)), FastMeta():
        op(x.to("meta"), w.to("meta"))


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_fast_meta_shapes_match() -> None:
    x, w, b = torch.randn(2, 4, 9, 7), torch.randn(6, 2, 3, 2), torch.randn(6)
    ops = [lambda x, w, b: torch.nn.functional.conv2d(x, w, b, (2, 1), (1, 0), (1, 2), 2),
           lambda x, w, b: torch.nn.functional.conv2d(x, w, None, 1, "same", 1, 2),
           lambda x, w, b: x.mean((2, 3), keepdim=True) * x,
           lambda x, w, b: torch.nn.functional.adaptive_avg_pool2d(x, (2, None)),
           lambda x, w, b: torch.nn.functional.gelu(x).sum(-1), lambda x, w, b: 2.0 * x.relu_() + 1,
           lambda x, w, b: torch.nn.functional.batch_norm(x, b[:4], b[:4].abs()),
           lambda x, w, b: torch.nn.functional.linear(x, w.flatten(1)[:, :7], b),
           lambda x, w, b: torch.cat([x, x[:, :1]], dim=-3),
           lambda x, w, b: x @ x.transpose(-1, -2), lambda x, w, b: x @ x[:1, :1].transpose(-1, -2),
           lambda x, w, b: torch.matmul(x, b[:3].expand(7, 3)), lambda x, w, b: torch.bmm(x[0], x[0].transpose(1, 2)),
           lambda x, w, b: torch.nn.functional.scaled_dot_product_attention(x, x, x[..., :3]),
           lambda x, w, b: torch.nn.functional.scaled_dot_product_attention(x, x, x, (x @ x.mT)[:1, :1] > 0),
           lambda x, w, b: torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True, scale=0.3),
           lambda x, w, b: torch.nn.functional.normalize(x), lambda x, w, b: torch.nn.functional.normalize(x, 1.0, -1)]
    for op in ops:
        with FastMeta():
            got = op(x.to("meta"), w.to("meta"), b.to("meta"))
        want = op(x.clone(), w, b)
        assert got.shape == want.shape and got.dtype == want.dtype and got.is_meta


class DataDependent(nn.Module):
    """How many channels it returns depends on the input's values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x[:, : int(x.mean() > 0) * 8 + 8]


def test_data_dependent_channels_name_the_line_or_run() -> None:
    model, x = DataDependent().eval(), torch.randn(1, 3, 8, 8)
    expected = model(x).shape
    try:
        slimify.convert(model, SWITCHES, example_input=x)
    except SlimifyError as e:  # one line naming the model's code
        assert "test_selfcheck.py, line" in str(e) and "\n" not in str(e)
        assert not slimify.is_slimmable(model)
        return
    for w in SWITCHES:  # or a model whose every switch runs like the original
        with slimify.width(model, w):
            assert model(x).shape == expected


class Detections(nn.Module):
    """Output sizes that depend on values (a detector's kept boxes): meta cannot run it, so the
    check runs for real, and the count of kept entries may differ between widths."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU())
        self.score, self.cls = nn.Conv2d(16, 1, 1), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        scores = self.score(f).flatten(1)
        keep = torch.nonzero(scores[0] > 0).squeeze(1)
        return self.cls(f.mean((2, 3))), scores[0][keep]


def test_value_dependent_output_sizes_run_for_real() -> None:
    model, x = Detections().eval(), torch.randn(1, 3, 12, 12)
    logits, kept = model(x)
    slimify.convert(model, SWITCHES, example_input=x)
    report = slimify.report(model)
    assert not [g for g in report.fixed if g.reason.startswith("self-check")]
    assert any(g.channels[0] < 16 for g in report.slimmable)
    for w in SWITCHES:
        with slimify.width(model, w):
            got_logits, got_kept = model(x)
        assert got_logits.shape == logits.shape and got_kept.ndim == 1


class KeywordDetections(Detections):
    """:class:`Detections` called with a keyword input: traced concretely."""

    def forward(self, x: torch.Tensor, *, gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward(x * gain)


@pytest.mark.parametrize("kwargs", [None, {"gain": 2.0}], ids=["symbolic", "concrete"])
def test_a_model_meta_cannot_run_is_run_for_real_once_per_switch(kwargs, monkeypatch) -> None:
    """The trace ran the original already, so its recorded output is the reference: after meta
    fails, only the three narrower switches run for real (not the original's full width again)."""
    from slimify.check.skeleton import Runner

    runs: list[bool] = []
    real_run = Runner._run

    def counted(self: Runner, net: nn.Module):
        runs.append(self.meta)
        return real_run(self, net)

    monkeypatch.setattr(Runner, "_run", counted)
    model = (KeywordDetections() if kwargs else Detections()).eval()
    x = torch.randn(1, 3, 12, 12)
    slimify.convert(model, SWITCHES, example_input=x, example_kwargs=kwargs)
    assert runs.count(False) == 3 and runs[0] is True
    logits, kept = model(x, **(kwargs or {}))
    with slimify.width(model, 0.25):
        assert model(x, **(kwargs or {}))[0].shape == logits.shape


class _ChosenForward(nn.Module):
    """FasterNet's Partial_conv3: forward is a bound method chosen in __init__ and stored on the
    instance; the split sizes are attributes that follow the width."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.dim_conv3, self.dim_untouched = dim // 4, dim - dim // 4
        self.partial_conv3 = nn.Conv2d(self.dim_conv3, self.dim_conv3, 3, 1, 1)
        self.forward = self.forward_split_cat

    def forward_split_cat(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = torch.split(x, [self.dim_conv3, self.dim_untouched], dim=1)
        return torch.cat((self.partial_conv3(x1), x2), 1)


def test_forward_bound_in_init_runs_on_the_copy() -> None:
    """The check's copy rebinds a forward stored on the instance; run on the original, it would
    read the original's unserved split sizes and raise a false alarm that fixes the groups."""
    model = nn.Sequential(nn.Conv2d(3, 32, 1), _ChosenForward(32), nn.Conv2d(32, 32, 1), _ChosenForward(32),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    slimify.convert(model, (0.5, 1.0), divisor=4, example_input=torch.randn(1, 3, 8, 8))
    report = slimify.report(model)
    assert not any("self-check" in g.reason for g in report.fixed), [g.reason for g in report.fixed]
    with slimify.width(model, 0.5):
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
