"""A backbone returning several feature maps (timm's ``features_only=True``, the form detection
and segmentation code uses): the maps' channels slim and narrow switches pad each map back to its
full channels with zeros, so the caller sees the original shapes at every width."""
from __future__ import annotations

import torch
import torch.nn as nn

import slimify
from slimify.rewrite.output_pad import PadOutputs


class Stages(nn.Module):
    """Three stages; every stage's output is returned (and read by the next stage)."""

    def __init__(self, classes: int = 0) -> None:
        super().__init__()
        self.s1 = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.s2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.s3 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU())
        self.classes = nn.Conv2d(64, classes, 1) if classes else None

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.s1(x)
        f2 = self.s2(f1)
        f3 = self.s3(f2)
        return [f1, f2, f3] if self.classes is None else [f2, self.classes(f3)]


def test_every_returned_map_slims_and_is_padded_back() -> None:
    x = torch.randn(1, 3, 16, 16)
    model = Stages().eval()
    expected = model(x)
    slimify.convert(model, example_input=x)
    report = slimify.report(model)
    assert not report.fixed and report.padded_output == [28, 56, 84, 112], report.table()
    assert all(torch.equal(a, b) for a, b in zip(model(x), expected))
    with slimify.width(model, 0.5):
        narrow = model(x)
        assert [t.shape for t in narrow] == [t.shape for t in expected]
        assert all((t[:, t.shape[1] // 2:] == 0).all() and (t[:, : t.shape[1] // 2] != 0).any() for t in narrow)
        plain = slimify.export(model, 0.5)
        assert isinstance(plain[1], PadOutputs)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain(x), narrow))


def test_maps_no_layer_reads_keep_their_size() -> None:
    """Class scores per pixel returned next to a feature map: the scores keep their size, the
    map slims."""
    model = Stages(classes=5).eval()
    slimify.convert(model, example_input=torch.randn(1, 3, 16, 16))
    groups = {g.origins[0].split(" ")[0]: g for g in slimify.report(model).groups}
    assert groups["classes"].fixed and "model output" in groups["classes"].reason
    assert not groups["s2.0"].fixed and groups["s2.0"].channels[1] == 16
    with slimify.width(model, 0.5):
        assert [t.shape[1] for t in model(torch.randn(1, 3, 16, 16))] == [32, 5]
