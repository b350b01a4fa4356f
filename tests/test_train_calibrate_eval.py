"""BN calibration touches only the active switch's statistics; evaluation reports every switch."""
from __future__ import annotations

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Subset

import slimify
from slimify import SlimifyError
from slimify.store.digits_net import DigitsNet
from slimify.train import calibrate_bn, digits, evaluate
from slimify.train.testing import slim_digitsnet

SWITCHES = (0.25, 0.5, 0.75, 1.0)


def bn_stats(model) -> dict[float, list[torch.Tensor]]:
    """Every switch's running statistics (cloned), read through the active-switch attributes."""
    stats = {}
    for w in slimify.switches(model):
        with slimify.width(model, w):
            stats[w] = [t.clone() for m in model.modules() if isinstance(m, _BatchNorm)
                        for t in (m.running_mean, m.running_var, m.num_batches_tracked)]
    return stats


def test_calibrate_changes_only_the_chosen_switch() -> None:
    model = slim_digitsnet(SWITCHES)
    params = {n: p.clone() for n, p in model.named_parameters()}
    before = bn_stats(model)
    calibrate_bn(model, Subset(digits("train"), range(64)), batches=2, batch_size=16, widths=[0.5])
    after = bn_stats(model)
    assert not all(torch.equal(a, b) for a, b in zip(before[0.5], after[0.5]))
    for w in (0.25, 0.75, 1.0):
        assert all(torch.equal(a, b) for a, b in zip(before[w], after[w])), w
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())
    with slimify.width(model, 0.5):
        assert all(int(m.num_batches_tracked) == 2 for m in model.modules() if isinstance(m, _BatchNorm))
        assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, _BatchNorm))


def test_calibrate_is_a_cumulative_average_over_batches() -> None:
    torch.manual_seed(0)
    model = slim_digitsnet(SWITCHES)
    model.eval()
    data = Subset(digits("train", augment=False), range(48))
    calibrate_bn(model, data, batches=3, batch_size=16, widths=[1.0], seed=0)
    assert not model.training  # mode restored
    first_bn = next(m for m in model.modules() if isinstance(m, _BatchNorm))
    first_conv = model[0]
    with torch.no_grad():  # the first BN sees conv(x): its mean is the mean of the batch means
        batches = torch.utils.data.DataLoader(data, 16, shuffle=True, generator=torch.Generator().manual_seed(0))
        means = [first_conv(x).mean(dim=(0, 2, 3)) for x, _ in batches]
    assert torch.allclose(first_bn.running_mean, torch.stack(means).mean(0), atol=1e-5)


def test_calibration_restores_accuracy_after_stats_are_wrecked() -> None:
    torch.manual_seed(0)
    model = slim_digitsnet(SWITCHES)
    slimify.finetune(model, digits("train"), "demo", epochs=3, lr=0.1, schedule="constant", warmup_epochs=0.0,
                     calibrate_batches=10, progress=False)
    val = digits("val")
    good = evaluate(model, val).top1()
    assert min(good.values()) > 80.0, good
    for w in SWITCHES:
        with slimify.width(model, w):
            for m in model.modules():
                if isinstance(m, _BatchNorm):
                    m.running_mean.add_(3.0)
    wrecked = evaluate(model, val).top1()
    calibrate_bn(model, digits("train"), batches=10)
    fixed = evaluate(model, val).top1()
    for w in SWITCHES:
        assert wrecked[w] < good[w] - 20 and fixed[w] > good[w] - 10, (w, good, wrecked, fixed)


def test_evaluate_reports_every_switch_and_matches_manual_accuracy() -> None:
    torch.manual_seed(0)
    model = slim_digitsnet(SWITCHES)
    val = Subset(digits("val"), range(100))
    result = evaluate(model, val, batch_size=32)
    assert [r.width for r in result.rows] == [1.0, 0.75, 0.5, 0.25]
    model.eval()
    x = torch.stack([val[i][0] for i in range(100)])
    y = torch.tensor([val[i][1] for i in range(100)])
    with torch.no_grad():
        logits = model(x)
    assert result[1.0].top1 == pytest.approx(100.0 * (logits.argmax(1) == y).float().mean().item())
    top5 = (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item() * 100
    assert result[1.0].top5 == pytest.approx(top5)
    assert result[1.0].loss == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert all(r.images == 100 and r.top5 >= r.top1 for r in result.rows)
    lines = str(result).splitlines()
    assert lines[0].split() == ["width", "top-1", "top-5", "loss", "images"] and len(lines) == 5
    assert result.table(markdown=True).startswith("| width | top-1 |")


def test_evaluate_accepts_loaders_widths_and_plain_models() -> None:
    model = slim_digitsnet(SWITCHES)
    loader = DataLoader(Subset(digits("val"), range(64)), batch_size=16)
    assert [r.width for r in evaluate(model, loader, widths=[0.5]).rows] == [0.5]
    with pytest.raises(SlimifyError, match="outside this model's range"):
        evaluate(model, loader, widths=[0.1])
    plain = evaluate(DigitsNet(), loader)
    assert [r.width for r in plain.rows] == [1.0] and plain.rows[0].images == 64
    with pytest.raises(SlimifyError, match="not slimmable"):
        evaluate(DigitsNet(), loader, widths=[0.5])
