"""An input size asked of a converted model is checked against the recorded one before any work
(issue 22): other channels and sizes below the model's downsampling are refused, naming the
recorded size; a size the model cannot run at is one error; under half the recorded size warns."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import slimify
from slimify.errors import SlimifyError
from slimify.store.input_size import check_input_size
from slimify.store.sources import TinyNet


def _tiny(size: int = 32) -> nn.Module:
    """TinyNet: two stride-2 convolutions, so 4x downsampling (an 8x8 map at 32 px)."""
    torch.manual_seed(0)
    return slimify.convert(TinyNet(), (0.5, 1.0), example_input=torch.randn(1, 3, size, size))


class FixedSize(nn.Module):
    """A flatten before the classifier: it runs at the converted size only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 16, 3, 2, 1), nn.Linear(16 * 8 * 8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def test_the_recorded_and_larger_sizes_pass() -> None:
    model = _tiny()
    assert check_input_size(model, (3, 32, 32)) is None
    assert check_input_size(model, (3, 64, 48)) is None
    assert check_input_size(model, (3, 16, 16)) is None  # half: still fine


def test_other_channels_are_refused_naming_the_recorded_size() -> None:
    with pytest.raises(SlimifyError, match=r"1x32x32 has 1 channel but the model takes 3 \(converted with 3x32x32\)"):
        check_input_size(_tiny(), (1, 32, 32))


@pytest.mark.parametrize("size, least", [(32, 4), (64, 4)])
def test_a_size_below_the_downsampling_is_refused(size: int, least: int) -> None:
    model = _tiny(size)
    with pytest.raises(SlimifyError, match=rf"smallest feature map is {size // 4}x{size // 4} at the 3x{size}x{size} "
                                           rf"it was converted with; give at least {least}x{least}"):
        check_input_size(model, (3, least - 1, least + 5))
    assert "under half" in check_input_size(model, (3, least, least))


def test_a_size_the_model_cannot_run_at_is_one_error() -> None:
    model = slimify.convert(FixedSize(), (0.5, 1.0), example_input=torch.randn(1, 3, 16, 16))
    with pytest.raises(SlimifyError, match=r"cannot run on a 3x24x24 input \(RuntimeError: .*converted with 3x16x16"):
        check_input_size(model, (3, 24, 24))


def test_the_check_changes_nothing_in_the_model() -> None:
    model = _tiny().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    check_input_size(model, (3, 8, 8))
    assert all(m.training for m in model.modules())  # BatchNorm statistics were not updated: it ran in eval mode
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == hooks
