"""Recurrent layers (``rules/recurrent.py``): input features and hidden units of nn.LSTM, nn.GRU
and nn.RNN slim, the layer's own forward runs narrow weights, and export gives a plain smaller
layer that computes what the slimmable one computes."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

import slimify
from slimify.deploy.extract import export

SWITCHES = (0.25, 0.5, 0.75, 1.0)


class OverChannels(nn.Module):
    """A recurrence over the time axis of a 1-d signal, its features being the conv's channels."""

    def __init__(self, kind: type[nn.RNNBase] = nn.LSTM, layers: int = 2, bidirectional: bool = True,
                 **kwargs) -> None:
        super().__init__()
        self.inp = nn.Conv1d(3, 32, 1)
        self.rnn = kind(32, 24, num_layers=layers, batch_first=True, bidirectional=bidirectional, **kwargs)
        out = self.rnn.proj_size if getattr(self.rnn, "proj_size", 0) else 24
        self.fc = nn.Linear(out * (2 if bidirectional else 1), 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).transpose(1, 2)  # (B, T, C)
        y, _ = self.rnn(h)
        return self.head(self.fc(y) + h).mean(1)


def _convert(model: nn.Module, x: torch.Tensor, divisor: int = 8) -> tuple[nn.Module, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        expected = model(x)
    slimify.convert(model, SWITCHES, divisor=divisor, example_input=x)
    with torch.no_grad():
        got = model(x)
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()  # full width is the original
    return model, expected


def _export_matches(model: nn.Module, x: torch.Tensor) -> None:
    for w in SWITCHES:
        with torch.no_grad(), slimify.width(model, w):
            want = model(x)
        plain = export(model, w).eval()
        with torch.no_grad():
            got = plain(x)
        assert got.shape == want.shape
        assert (got - want).abs().max() <= 1e-5 * want.abs().max().clamp_min(1e-6), w


@pytest.mark.parametrize("kind, gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
def test_recurrent_input_and_hidden_slim(kind: type[nn.RNNBase], gates: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7)
    model, _ = _convert(OverChannels(kind), x)
    with torch.no_grad(), slimify.width(model, 0.5):
        model(x)
        rnn = model.rnn
        assert (rnn.input_size, rnn.hidden_size) == (16, 16)
        # the fused kernel's weight list holds the narrow tensors: the recurrence really is smaller
        assert [tuple(w.shape) for w in rnn._flat_weights[:2]] == [(gates * 16, 16), (gates * 16, 16)]
        assert tuple(rnn.weight_ih_l1.shape) == (gates * 16, 2 * 16)  # layer 2 reads both directions
    with torch.no_grad(), slimify.width(model, 1.0):
        model(x)
        assert model.rnn._flat_weights[0].shape == (gates * 24, 32)
    _export_matches(model, x)
    plain = export(model, 0.5)
    assert type(plain.rnn) is kind and (plain.rnn.input_size, plain.rnn.hidden_size) == (16, 16)


def test_lstm_gradients_reach_only_active_rows() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7)
    model, _ = _convert(OverChannels(nn.LSTM, layers=1), x)
    model.train()
    with slimify.width(model, 0.5):
        model(x).sum().backward()
    grad = model.rnn.weight_ih_l0.grad
    assert grad.shape == (96, 32)  # the full parameter
    rows = grad.abs().sum(1) > 0
    assert rows.sum() == 4 * 16 and all(rows[g * 24:g * 24 + 16].all() for g in range(4))  # first 16 of each gate
    assert (grad.abs().sum(0) > 0).sum() == 16


def test_lstm_keeps_state_dict_and_deep_copies() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7)
    reference = OverChannels()
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    model, expected = _convert(reference, x)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    with slimify.width(model, 0.5):  # grad mode, narrow: the served weights are views of the full ones
        model(x)
        twin = copy.deepcopy(model)
    with torch.no_grad():
        for w in (0.5, 1.0):
            with slimify.width(model, w), slimify.width(twin, w):
                assert torch.equal(model(x), twin(x))
    with torch.no_grad(), slimify.width(twin, 1.0):
        assert (twin(x) - expected).abs().max() <= 1e-5 * expected.abs().max()


class WithState(nn.Module):
    """The initial state comes from a layer: its features must be the hidden units."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv1d(3, 32, 1)
        self.init = nn.Linear(32, 24)
        self.rnn = nn.GRU(32, 24, batch_first=True)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).transpose(1, 2)
        h0 = self.init(h.mean(1)).unsqueeze(0)
        y, _ = self.rnn(h, h0)
        return self.head(y[:, -1])


def test_initial_state_follows_hidden_units() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7)
    model, _ = _convert(WithState(), x)
    with slimify.width(model, 0.5):
        assert model.init.out_features == model.rnn.hidden_size == 16
    _export_matches(model, x)


def test_timm_sequencer_block_slims() -> None:
    from timm.models.sequencer import Sequencer2dBlock

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 1)
            self.block = Sequencer2dBlock(32, 16)
            self.head = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.block(self.stem(x).permute(0, 2, 3, 1)).mean((1, 2)))

    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 5)
    model, _ = _convert(Net(), x)
    assert all(g.origins == ["head (output features)"] for g in slimify.report(model).fixed)
    with slimify.width(model, 0.5):
        assert model.block.rnn_tokens.rnn_v.hidden_size == 8 and model.block.rnn_tokens.rnn_h.input_size == 16
    _export_matches(model, x)


class OverTime(nn.Module):
    """Channels laid out along the recurrence's time axis: slimming them would shorten the sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv1d(3, 16, 1)
        self.rnn = nn.LSTM(7, 8, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.inp(x))[0].mean(1))


@pytest.mark.filterwarnings("ignore:LSTM with projections")
@pytest.mark.parametrize("make, why", [(OverTime, "time or batch"),
                                       (lambda: OverChannels(nn.LSTM, proj_size=8), "proj_size")])
def test_unsupported_recurrences_keep_their_size(make, why: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7)
    model, _ = _convert(make(), x)
    reasons = " ".join(g.reason for g in slimify.report(model).fixed)
    assert why in reasons
    assert slim_data_of(model.rnn) is None or "hidden_size" not in slim_data_of(model.rnn).attrs
    _export_matches(model, x)


def slim_data_of(module: nn.Module):
    from slimify.rewrite.serve import slim_data
    return slim_data(module)


class StateSpaceMixer(nn.Module):
    """timm's EfficientViM HSM-SSD (a recurrence in its dual form): ``h = x @ (a·b)ᵀ`` pairs every
    channel with every state dim, ``y = h @ c`` sums over the state dims again."""

    def __init__(self) -> None:
        from timm.models.efficientvim import HSMSSD
        super().__init__()
        self.inp = nn.Conv2d(3, 32, 1)
        self.mixer = HSMSSD(32, state_dim=8)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        y, h = self.mixer(x)
        return self.head((x + y).mean((2, 3)) + h.mean(-1))


def test_outer_product_keeps_state_dims_and_slims_channels() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 5)
    model = StateSpaceMixer()
    with torch.no_grad():  # EfficientViM initialises out_proj's BN weight to 0: wake the branch up
        for p in model.parameters():
            if not p.any():
                p.add_(0.5)
    model, _ = _convert(model, x)
    reasons = [g.reason for g in slimify.report(model).fixed]
    assert any("outer product" in r for r in reasons)
    mixer = model.mixer
    with slimify.width(model, 0.5):
        assert model.inp.out_channels == 16 and mixer.hz_proj.conv.in_channels == 16
        assert mixer.BCdt_proj.conv.out_channels == 3 * 8  # state dims keep their size
    _export_matches(model, x)
