"""Importance-ordered channels (issue 6): reordering keeps every model's function, really
changes what narrow switches keep, sorts each group by its score, and leaves the plan valid."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn as nn

import slimify
from slimify.analysis.stages import analyze_model
from slimify.ordering.registry import class_scores
from tests.zoo import ZOO, build

reorder_module = importlib.import_module("slimify.ordering.permute")

SIZE: dict[str, int] = {"tv:inception_v3": 96}  # input size where 64 px is too small for the model


def randomize(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm affine and statistics, so a wrong permutation changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.weight is not None:
                    m.weight.normal_(0, 1, generator=g)
                    m.bias.normal_(0, 0.2, generator=g)
                if m.running_mean is not None:
                    m.running_mean.normal_(0, 0.2, generator=g)
                    m.running_var.uniform_(0.5, 2.0, generator=g)
    return model


def assert_same(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("name", list(ZOO))
def test_full_width_unchanged_on_zoo(name: str) -> None:
    model = randomize(build(name))
    size = SIZE.get(name, 64)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    result = slimify.reorder(model, "l1", example_input=x, check=False)
    assert result.moved > 0
    with torch.no_grad():
        assert_same(model(x), expected)


class TinyBranches(nn.Module):
    """Residual + concat + depthwise + flatten→linear + a per-channel parameter read in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Sequential(nn.Conv2d(16, 24, 3, 1, 1, groups=8), nn.ReLU())
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 32).reshape(1, 32, 1, 1))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(32 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(h + self.body(h))
        y = torch.cat([self.left(h), self.right(h)], 1) * self.scale
        return self.head(self.pool(y).flatten(1))


def _tiny(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    return randomize(TinyBranches()).eval(), torch.randn(4, 3, 16, 16)


def test_tiny_model_exact_and_every_tensor_moves() -> None:
    model, x = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x)
    result = slimify.reorder(model, "l2", example_input=x[:1])
    with torch.no_grad():
        assert_same(model(x), expected)
    assert result.max_change <= 1e-5 and not result.skipped
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    # producers, consumers (head's input features), BN statistics and the parameter read in forward
    for key in ("stem.0.weight", "stem.1.running_mean", "body.0.bias", "right.0.weight", "head.weight", "scale"):
        assert key in changed, key


@pytest.mark.parametrize("method", ["l1", "l2", "bn", "taylor"])
def test_scores_non_increasing_after_reorder(method: str) -> None:
    model = randomize(build("resnet10t"))
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    data = [(x, torch.arange(8) % 10)] * 2
    analysis = analyze_model(model, example_input=x[:1])
    result = slimify.reorder(model, method, data, analysis)
    assert result.moved > 0 and not result.skipped
    after = class_scores(model, analysis.space, analysis.table, method, data)
    for g in analysis.table.groups:
        if g.fixed or len(g.classes) < 2:
            continue
        s = after[g.classes]  # rank order
        tol = 1e-5 * float(np.abs(s).max())
        assert np.all(np.diff(s) <= tol), f"group {g.index}: {s[:8]}"
        np.testing.assert_allclose(s, result.scores[g.index], rtol=1e-4, atol=tol)


def test_plan_still_valid_after_reorder() -> None:
    model = randomize(build("tv:mobilenet_v2"))
    x = torch.randn(1, 3, 64, 64)
    before = analyze_model(model, example_input=x)
    slimify.reorder(model, "bn", analysis=before, example_input=x)
    after = analyze_model(model, example_input=x)
    assert [(g.size, g.unit, g.fixed, g.channels) for g in after.report.groups] == \
           [(g.size, g.unit, g.fixed, g.channels) for g in before.report.groups]
    assert after.plan.kept == before.plan.kept
    for key, per_switch in before.plan.params.items():
        assert [_cuts(dims) for dims in after.plan.params[key]] == [_cuts(dims) for dims in per_switch], key


def _cuts(dims: dict) -> dict[int, list[int]]:
    return {d: list(range(i.start, i.stop)) if isinstance(i, slice) else np.asarray(i).tolist() for d, i in dims.items()}


def test_narrow_switch_keeps_the_best_channels() -> None:
    torch.manual_seed(0)
    plain = randomize(build("resnet10t"))
    ordered = randomize(build("resnet10t"))
    x = torch.randn(2, 3, 64, 64)
    slimify.convert(plain, example_input=x[:1])
    slimify.convert(ordered, example_input=x[:1], reorder="l1")
    result = slimify.state.get_state(ordered).record.reorder
    report = slimify.report(ordered)
    half = report.switches.index(0.5)
    # the classes kept at 0.5 are the highest-scoring ones, and not the old prefix
    differs = 0
    for g, order in result.orders.items():
        k = report.groups[g].channels[half] // report.groups[g].unit
        differs += not np.array_equal(np.sort(order[:k]), np.arange(k))
        assert result.scores[g][:k].min() >= result.scores[g][k:].max() if k < len(order) else True
    assert differs > 0
    with torch.no_grad():
        assert_same(ordered(x), plain(x))
        with slimify.width(plain, 0.5), slimify.width(ordered, 0.5):
            assert not torch.allclose(ordered(x), plain(x), atol=1e-3)


def test_convert_with_taylor_data_and_report() -> None:
    model, x = _tiny()
    with torch.no_grad():
        expected = model(x)
    data = [(x, torch.tensor([0, 1, 2, 3]))]
    slimify.convert(model, (0.5, 1.0), divisor=4, example_input=x[:1], reorder="taylor", reorder_data=data)
    result = slimify.state.get_state(model).record.reorder
    assert result.method == "taylor" and result.moved > 0
    with torch.no_grad():
        assert_same(model(x), expected)
        with slimify.width(model, 0.5):
            assert model(x).shape == expected.shape


class TwoProducers(nn.Module):
    """A residual stream whose 16 channels are made by two 8-channel convs side by side (MixConv):
    moving a channel from one conv to the other is not a per-tensor permutation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a, self.b = nn.Conv2d(16, 8, 1), nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + torch.cat([self.a(h), self.b(h)], 1)
        return self.head(h.mean((2, 3)))


def test_irregular_group_keeps_its_order_with_a_reason() -> None:
    torch.manual_seed(0)
    model, x = TwoProducers().eval(), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.b.weight.mul_(10)  # the best channels sit in the second conv
        expected = model(x)
    result = slimify.reorder(model, "l1", example_input=x[:1])
    assert result.skipped and all("irregularly" in why for why in result.skipped.values())
    with torch.no_grad():
        assert_same(model(x), expected)


def test_safety_net_reverts_a_wrong_permutation(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = reorder_module._tensor_moves

    def forget_head(model: nn.Module, space: object) -> list:  # a consumer the analysis "missed"
        return [m for m in real(model, space) if not m[0].startswith("head.")]

    monkeypatch.setattr(reorder_module, "_tensor_moves", forget_head)
    with pytest.warns(UserWarning, match="keep their original order"):
        result = slimify.reorder(model, "l1", example_input=x[:1])
    assert result.max_change > 1e-4 and set(result.skipped) == set(result.orders)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bad_input_is_a_slimify_error() -> None:
    model, x = _tiny()
    with pytest.raises(slimify.SlimifyError, match="unknown reorder method"):
        slimify.reorder(model, "random", example_input=x[:1])
    with pytest.raises(slimify.SlimifyError, match="taylor scores need data"):
        slimify.reorder(model, "taylor", example_input=x[:1])
    with pytest.raises(slimify.SlimifyError, match="yielded no batches"):
        slimify.reorder(model, "taylor", data=iter([]), example_input=x[:1])
    with pytest.raises(slimify.SlimifyError, match="unknown reorder method"):
        slimify.convert(model, example_input=x[:1], reorder="L1")
    slimify.convert(model, (0.5, 1.0), divisor=4, example_input=x[:1])
    with pytest.raises(slimify.SlimifyError, match="already slimmable"):
        slimify.reorder(model, "l1")


def test_reorder_is_idempotent_for_weight_norms() -> None:
    model, x = _tiny()
    slimify.reorder(model, "l1", example_input=x[:1])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    again = slimify.reorder(model, "l1", example_input=x[:1])
    assert again.moved == 0 and not again.skipped
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# -- the `slimify reorder` command ------------------------------------------------------------------
def _saved_digitsnet(tmp_path) -> tuple[str, nn.Module]:
    from slimify.store.sources import create

    torch.manual_seed(0)
    net = randomize(create("slimify:digitsnet")).eval()
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    return str(path), net


def test_cli_writes_reordered_weights_that_compute_the_same(tmp_path, capsys) -> None:
    from slimify.cli.app import main
    from slimify.store.sources import create

    weights, net = _saved_digitsnet(tmp_path)
    out = tmp_path / "net_l1.safetensors"
    with pytest.raises(SystemExit) as e:
        main(["reorder", "slimify:digitsnet", "--checkpoint", weights, "--input-size", "32", "-o", str(out)])
    assert e.value.code == 0 and "reordered 5 of 5" in capsys.readouterr().out
    again = create("slimify:digitsnet", checkpoint=str(out)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert_same(again(x), net(x))
    assert not torch.equal(again[0].weight, net[0].weight)
    with pytest.raises(SystemExit) as e:  # never overwrites without --force
        main(["reorder", "slimify:digitsnet", "--checkpoint", weights, "--input-size", "32", "-o", str(out)])
    assert e.value.code == 2 and "--force" in capsys.readouterr().err


def test_cli_slim_output_is_converted_and_loads(tmp_path, capsys) -> None:
    from slimify.cli.app import main

    weights, net = _saved_digitsnet(tmp_path)
    out = tmp_path / "net.slim"
    with pytest.raises(SystemExit) as e:
        main(["reorder", "slimify:digitsnet", "--checkpoint", weights, "--input-size", "32", "--method", "taylor",
              "--data", "digits", "--batches", "2", "--switches", "0.5,1.0", "-o", str(out)])
    assert e.value.code == 0, capsys.readouterr().err
    loaded = slimify.load(out)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert_same(loaded(x), net(x))
        with slimify.width(loaded, 0.5):
            assert loaded(x).shape == (4, 10)


@pytest.mark.parametrize("args, message", [
    (["slimify:digitsnet", "--method", "taylor", "-o", "x.pt"], "needs --data"),
    (["slimify:digitsnet", "--method", "norm", "-o", "x.pt"], "--method"),
    (["slimify:digitsnet", "-o", "x.txt"], "must end with"),
    (["model.slim", "-o", "x.pt"], "already slimmable"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys, monkeypatch) -> None:
    from slimify.cli.app import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["reorder", *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.startswith("error:") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("extra, method", [([], "bn"), (["--reorder", "l1"], "l1"), (["--reorder", "none"], None)])
def test_cli_convert_with_pretrained_weights_reorders_by_default(extra, method, tmp_path, capsys) -> None:
    """Issue 6: pretrained weights in, important channels first unless told otherwise; the
    converted model still computes the checkpoint's function at full width."""
    from slimify.cli.app import main

    weights, net = _saved_digitsnet(tmp_path)
    out = tmp_path / "net.slim"
    with pytest.raises(SystemExit) as e:
        main(["convert", "slimify:digitsnet", "--checkpoint", weights, "--input-size", "32", *extra, "-o", str(out)])
    printed = capsys.readouterr().out
    assert e.value.code == 0
    assert (f"reordered by {method}" in printed) if method else ("reordered" not in printed)
    loaded = slimify.load(out)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert_same(loaded(x), net(x))
    first = loaded[0].weight.detach()
    assert torch.equal(first, net[0].weight) is (method is None)
