"""Sandwich training over continuous widths (issue 14, item 3)."""
from __future__ import annotations

import pytest
import torch

import slimify
from slimify.errors import SlimifyError
from slimify.store.digits_net import DigitsNet
from slimify.train import digits, finetune, load_recipe
from slimify.train.progress import read_log
from slimify.train.sandwich import RANDOM_KEY, sandwich_widths

pytestmark = pytest.mark.usefixtures("one_thread")


def slim() -> torch.nn.Module:
    torch.manual_seed(0)
    return slimify.convert(DigitsNet(), (0.25, 0.5, 1.0), 4, torch.randn(1, 3, 32, 32))


def test_widths_of_a_step_are_largest_random_smallest_and_reproducible() -> None:
    widths = sandwich_widths([0.3, 0.9], 3, seed=1, step=7)
    assert widths[0] == 0.9 and widths[-1] == 0.3 and len(widths) == 5
    assert all(0.3 <= w <= 0.9 for w in widths) and widths == sorted(widths, reverse=True)
    assert widths == sandwich_widths([0.3, 0.9], 3, seed=1, step=7)
    assert widths != sandwich_widths([0.3, 0.9], 3, seed=1, step=8)
    assert len(sandwich_widths([0.3, 0.9], None, 0, 0)) == 4  # two random widths by default


def test_finetune_over_a_width_range_trains_random_widths(tmp_path) -> None:
    model = slim()
    before = model[0].weight.detach().clone()
    result = finetune(model, digits("train"), "demo", out_dir=tmp_path, width_range=[0.25, 1.0], sandwich=2,
                      narrow_loss="distill", batch_size=32, epochs=1, stop_after=3, progress=False, workers=0,
                      calibrate_batches=0, log_every=1)
    assert result.step == 3 and not torch.equal(before, model[0].weight)
    state = slimify.state.get_state(model)
    assert state.slots  # random widths between the switches were served as configurations
    logged = [r["loss"] for r in read_log(tmp_path / "log.jsonl") if r["event"] == "train"]
    assert len(logged) == 3 and all(set(r) == {"1.0", "0.25", RANDOM_KEY} for r in logged)
    assert list(model.state_dict()) == list(slim().state_dict())  # no new keys from the random widths


@pytest.mark.parametrize("value", [[0.5], [0.9, 0.5], [0.0, 1.0], [0.5, 1.5]])
def test_bad_width_range_in_a_recipe(value) -> None:
    with pytest.raises(SlimifyError, match="width_range"):
        load_recipe("demo", width_range=value)


def test_width_range_below_the_narrowest_switch_is_refused() -> None:
    with pytest.raises(SlimifyError, match="outside this model's range"):
        finetune(slim(), digits("train"), "demo", width_range=[0.1, 1.0], stop_after=1, progress=False, workers=0)


def test_named_configurations_train_beside_the_switches(tmp_path) -> None:
    model = slim()
    slimify.add_config(model, "lean", {0: 8, 2: 16})
    result = finetune(model, digits("train"), "demo", out_dir=tmp_path, configs=["lean"], batch_size=32, epochs=1,
                      stop_after=2, progress=False, workers=0, calibrate_batches=0, log_every=1)
    assert "lean" in result.losses and 0.25 in result.losses
    with pytest.raises(SlimifyError, match="no width configuration named 'missing'"):
        finetune(model, digits("train"), "demo", configs=["missing"], stop_after=1, progress=False, workers=0)
