"""Patterns from the foreign models that stayed short of the benchmark's bound (issue 13,
``python -m benchmarks.foreign``), each on a tiny hand-built module: torchvision MViT's class
token split off with ``tensor_split`` and its heads pooled folded into the batch, RAFT's split of
the context features into a hidden state of a submodule's size and the rest. Full width exact,
every switch runs and exports equal to it, and the channels that used to stay fixed slim; plus
transformers Hiera's branch on a pair of width attributes."""
from __future__ import annotations

import torch
import torch.nn as nn

import slimify
from tests.test_rules_extra import _check


def _group(model: nn.Module, origin: str):
    return next(g for g in slimify.report(model).groups if any(o.startswith(origin) for o in g.origins))


def _slims(model: nn.Module, origin: str) -> list[int]:
    group = _group(model, origin)
    assert not group.fixed, group.reason
    assert group.channels[1] < group.size, group  # width 0.5 keeps fewer channels
    return group.channels


class ClassTokenSplit(nn.Module):
    """``tensor_split`` along the token dim (MViT's class token): channels pass through."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.mix = nn.Linear(32, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls, tokens = torch.tensor_split(self.embed(x.transpose(1, 2)), indices=(1,), dim=1)
        tokens = self.mix(tokens).relu()
        return self.head(torch.cat((cls, tokens), dim=1).mean(1))


class ChannelTensorSplit(nn.Module):
    """``tensor_split`` along channels: in equal sections (like ``chunk``), and at an index
    held by an attribute (like ``x[:, :self.split_at]``)."""

    def __init__(self) -> None:
        super().__init__()
        self.split_at = 16
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.expand = nn.Conv2d(32, 40, 1)
        self.head = nn.Conv2d(40, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv(x).tensor_split(2, dim=1)
        y = torch.cat((a, self.conv2(b)), dim=1)
        p, q = torch.tensor_split(self.expand(y), (self.split_at,), dim=1)
        return self.head(torch.cat((p.relu(), q), dim=1))


class HeadsPooledInBatch(nn.Module):
    """MViTv2's attention pooling on a tiny scale: the class token split off with
    ``tensor_split``, heads folded into the batch with sizes read as ``B, N, C = x.shape[:3]``, a
    depthwise conv over each head's channels, the class token concatenated back and a
    LayerNorm over each head's channels."""

    def __init__(self, dim: int = 32, heads: int = 4, thw: tuple[int, int] = (4, 4)) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.thw = heads, dim // heads, thw
        self.embed = nn.Linear(5, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.pool = nn.Conv2d(self.head_dim, self.head_dim, 3, padding=1, groups=self.head_dim, bias=False)
        self.norm = nn.LayerNorm(self.head_dim)
        self.project = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        cls, x = torch.tensor_split(x, indices=(1,), dim=2)
        x = x.transpose(2, 3)
        B, N, C = x.shape[:3]
        x = self.pool(x.reshape((B * N, C) + self.thw))
        x = x.reshape(B, N, C, -1).transpose(2, 3)
        return self.norm(torch.cat((cls, x), dim=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.transpose(1, 2))
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).transpose(1, 3).unbind(dim=2)
        k, v = self._pool(k), self._pool(v)
        out = (q @ k.transpose(2, 3)).softmax(-1) @ v
        return self.head(self.project(out.transpose(1, 2).reshape(B, N, C)).mean(1))


def test_tensor_split_along_tokens_passes_channels_through() -> None:
    model = _check(ClassTokenSplit(), torch.randn(2, 6, 9))
    assert _slims(model, "embed") == [8, 16, 24, 32]
    assert _slims(model, "mix") == [8, 16, 24, 32]


def test_tensor_split_along_channels() -> None:
    model = _check(ChannelTensorSplit(), torch.randn(2, 3, 8, 8))
    assert _slims(model, "conv ") == [4, 8, 12, 16]  # two equal sections, like chunk
    sections = [g for g in slimify.report(model).groups if "expand (output channels)" in g.origins]
    assert sorted(g.size for g in sections) == [16, 24]  # cut at self.split_at
    assert all(not g.fixed and g.channels[1] == g.size // 2 for g in sections)
    with slimify.width(model, 0.5):
        assert model.split_at == 8


def test_heads_folded_into_the_batch_slim_by_heads() -> None:
    model = _check(HeadsPooledInBatch(), torch.randn(2, 5, 17))
    group = _group(model, "qkv")
    assert not group.fixed, group.reason
    assert group.unit == 3 * 8  # q, k and v of one head
    assert group.channels == [24, 48, 72, 96]


class UpdateBlock(nn.Module):
    """A container (no parameters of its own) exposing its recurrent state's size, like RAFT's."""

    def __init__(self, hidden: int, context: int) -> None:
        super().__init__()
        self.gru = nn.Conv2d(hidden + context, hidden, 3, padding=1)
        self.flow = nn.Conv2d(hidden, 2, 3, padding=1)
        self.hidden_state_size = hidden

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.gru(torch.cat([h, c], dim=1)))
        return h, self.flow(h)


class ContextSplit(nn.Module):
    """RAFT's ``torch.split(context, [hidden_state_size, context.shape[1] - hidden_state_size])``
    with the size read from a submodule's attribute, then a recurrent update run a few times."""

    def __init__(self, hidden: int = 24, context: int = 16) -> None:
        super().__init__()
        self.context_encoder = nn.Conv2d(3, hidden + context, 3, padding=1)
        self.update_block = UpdateBlock(hidden, context)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context_out = self.context_encoder(x)
        hidden_state_size = self.update_block.hidden_state_size
        out_channels_context = context_out.shape[1] - hidden_state_size
        h, c = torch.split(context_out, [hidden_state_size, out_channels_context], dim=1)
        flow = torch.zeros_like(x[:, :2])
        for _ in range(3):
            h, delta = self.update_block(h, torch.relu(c))
            flow = flow + delta
        return flow


def test_split_into_a_submodule_size_and_the_rest() -> None:
    model = _check(ContextSplit(), torch.randn(2, 3, 8, 8))
    hidden = _slims(model, "update_block.gru")  # the recurrent state follows hidden_state_size
    assert hidden[-1] == 24
    _slims(model, "context_encoder")
    with slimify.width(model, 0.5):
        assert model.update_block.hidden_state_size == hidden[1]


class PairedLayer(nn.Module):
    """transformers' HieraLayer: ``if self.hidden_size != self.hidden_size_output`` decides
    whether the residual is projected; only ``hidden_size_output`` is used as a size."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.hidden_size, self.hidden_size_output = dim, dim_out
        self.layernorm_before = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim_out)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = x.shape
        h = self.layernorm_before(x)
        if self.hidden_size != self.hidden_size_output:
            x = self.proj(h).view(batch_size, seq_len, self.hidden_size_output)
        return x + self.fc(h)


class PairedSizes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 16)
        self.layers = nn.Sequential(PairedLayer(16, 32), PairedLayer(32, 32))
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.embed(x.transpose(1, 2))).mean(1))


def test_paired_size_attributes_keep_their_branch() -> None:
    """At width 0.5 the served ``hidden_size_output`` (16 of 32) would equal an unserved
    ``hidden_size`` (16) and skip the projection; its partner follows the layer's input."""
    model = _check(PairedSizes(), torch.randn(2, 5, 7))
    assert _slims(model, "embed") == [4, 8, 12, 16]
    assert _slims(model, "layers.0.fc") == [8, 16, 24, 32]
    with slimify.width(model, 0.5):
        assert (model.layers[0].hidden_size, model.layers[0].hidden_size_output) == (8, 16)


def test_paired_names() -> None:
    from slimify.analysis.paired_sizes import paired_names
    assert paired_names("hidden_size", "hidden_size_output")
    assert paired_names("dim", "dim_out") and paired_names("in_chs", "out_chs")
    assert not paired_names("head_dim", "hidden_size_output")  # a head's size, not the layer's input
    assert not paired_names("query_stride", "query_stride_out")  # not a width
