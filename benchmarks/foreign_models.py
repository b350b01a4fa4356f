"""The models of the foreign-model benchmark (``benchmarks/foreign.py``): code nobody tuned slimify
on. Each entry builds a model with random init (no download) and its example inputs.

- transformers vision models built from their config classes (``num_hidden_layers``/depths shrunk),
- torchvision detectors, video, segmentation and optical-flow models (``weights=None``),
- hand-written models of the kinds users write (below): a UNet, a Siamese net on two inputs, a
  model that branches on the input size, a CNN + ``nn.TransformerEncoder`` hybrid, and a model
  whose forward is decorated and takes ``**kwargs``.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["Spec", "SPECS", "UNet", "Siamese", "SizeBranch", "ConvTransformer", "DecoratedKwargs", "returns_dict"]


@dataclass
class Spec:
    """How to build one model and call it: ``model(*args, **kwargs)``. ``varying``: output
    sizes along dim 0 may change with the width (detections: the box count)."""

    build: Callable[[], nn.Module]
    args: Callable[[], tuple[Any, ...]]
    kwargs: Callable[[], dict[str, Any]] = field(default=dict)
    varying: bool = False
    timeout: float = 300.0


# ---------------------------------------------------------------- hand-written models

def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Pooling down, transposed convs and ``F.interpolate`` up, ``cat`` skips; 2-class logits per pixel."""

    def __init__(self, classes: int = 2, width: int = 32) -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.enc3 = _block(3, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.mid = _block(4 * w, 8 * w)
        self.up3 = nn.ConvTranspose2d(8 * w, 4 * w, 2, stride=2)
        self.dec3 = _block(8 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w)
        self.reduce1 = nn.Conv2d(2 * w, w, 1)
        self.dec1 = _block(2 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        m = self.mid(F.max_pool2d(e3, 2))
        d3 = self.dec3(torch.cat([self.up3(m), e3], dim=1))
        d2 = self.dec2(torch.cat([self.up2(d3), e2], dim=1))
        up = F.interpolate(self.reduce1(d2), size=e1.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.dec1(torch.cat([up, e1], dim=1)))


class Siamese(nn.Module):
    """One encoder on two images; the head reads ``|f(a) - f(b)|``: a similarity logit."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(_block(3, width), nn.MaxPool2d(2), _block(width, 2 * width), nn.MaxPool2d(2),
                                     _block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(4 * width, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head((self.encoder(a) - self.encoder(b)).abs())


class SizeBranch(nn.Module):
    """Python control flow on sizes and dtypes, as real model code has it: a check that raises, a
    branch on ``x.shape[-1]``, ``int``/``math.ceil`` on sizes to pad to a multiple of the patch."""

    def __init__(self, num_channels: int = 3, width: int = 32, patch: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.num_channels, self.patch = num_channels, patch
        self.stem = nn.Conv2d(num_channels, width, patch, stride=patch)
        self.pool = nn.MaxPool2d(2)
        self.body = nn.Sequential(_block(width, 2 * width), _block(2 * width, 2 * width))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_channels = x.shape[1]
        if num_channels != self.num_channels:
            raise ValueError(f"expected {self.num_channels} channels, got {num_channels}")
        if x.dtype != self.stem.weight.dtype:
            x = x.to(self.stem.weight.dtype)
        h, w = int(x.shape[-2]), int(x.shape[-1])
        pad_h, pad_w = math.ceil(h / self.patch) * self.patch - h, math.ceil(w / self.patch) * self.patch - w
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.stem(x)
        if x.shape[-1] > 32:
            x = self.pool(x)
        x = self.body(x)
        return self.head(x.mean(dim=(2, 3)))


class ConvTransformer(nn.Module):
    """A conv stem whose tokens go through ``nn.TransformerEncoder`` (a common hybrid)."""

    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim // 2, 3, stride=2, padding=1), nn.BatchNorm2d(dim // 2), nn.ReLU(),
                                  nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1), nn.BatchNorm2d(dim), nn.ReLU())
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.encoder(tokens).mean(dim=1))


def returns_dict(forward: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator of the kind libraries put on ``forward`` (transformers' ``can_return_tuple``):
    it takes ``*args, **kwargs`` and may change the output's form."""

    @functools.wraps(forward)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return_tuple = kwargs.pop("return_tuple", False)
        out = forward(self, *args, **kwargs)
        return tuple(out.values()) if return_tuple else out

    return wrapper


class DecoratedKwargs(nn.Module):
    """A decorated forward with a keyword-only argument, an optional ``None`` and ``**kwargs``,
    returning a dict."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(_block(3, width), nn.MaxPool2d(2), _block(width, 2 * width))
        self.head = nn.Linear(2 * width, classes)

    @returns_dict
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, *, temperature: float = 1.0,
                **kwargs: Any) -> dict[str, torch.Tensor]:
        f = self.features(x)
        if mask is not None:
            f = f * mask
        logits = self.head(f.mean(dim=(2, 3))) / temperature
        return {"logits": logits, "probs": logits.softmax(-1)}


def _image(size: int = 224, frames: int = 0) -> Callable[[], tuple[Any, ...]]:
    def make() -> tuple[Any, ...]:
        torch.manual_seed(0)
        shape = (1, 3, frames, size, size) if frames else (1, 3, size, size)
        return (torch.randn(shape),)
    return make


HAND: dict[str, Spec] = {
    "unet": Spec(UNet, _image(128)),
    "siamese": Spec(Siamese, lambda: (torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))),
    "size_branch": Spec(SizeBranch, _image(150)),
    "conv_transformer": Spec(ConvTransformer, _image(64)),
    "decorated_kwargs": Spec(DecoratedKwargs, _image(64), kwargs=lambda: {"temperature": 2.0}),
}


# ---------------------------------------------------------------- transformers

def _hf(name: str, **config: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers
        torch.manual_seed(0)
        cfg = getattr(transformers, f"{name}Config")(**config)
        return getattr(transformers, f"{name}ForImageClassification")(cfg).eval()
    return build


_HF_CONFIGS: dict[str, dict[str, Any]] = {
    "ViT": {"num_hidden_layers": 2},
    "DeiT": {"num_hidden_layers": 2},
    "Beit": {"num_hidden_layers": 2, "use_relative_position_bias": True},
    "Data2VecVision": {"num_hidden_layers": 2, "use_relative_position_bias": True},
    "Dinov2": {"num_hidden_layers": 2},
    "Swin": {"depths": [1, 1, 2, 1]},
    "Swinv2": {"depths": [1, 1, 2, 1]},
    "ConvNext": {"depths": [1, 1, 2, 1]},
    "ConvNextV2": {"depths": [1, 1, 2, 1]},
    "ResNet": {"depths": [1, 1, 1, 1]},
    "RegNet": {"depths": [1, 1, 2, 1]},
    "Bit": {"depths": [1, 1, 1, 1]},
    "MobileNetV1": {},
    "MobileNetV2": {},
    "MobileViT": {},
    "MobileViTV2": {},
    "EfficientNet": {"image_size": 224},
    "Levit": {},
    "PvtV2": {"depths": [1, 1, 1, 1]},
    "Pvt": {"depths": [1, 1, 1, 1]},
    "PoolFormer": {"depths": [1, 1, 2, 1]},
    "Segformer": {"depths": [1, 1, 1, 1]},
    "Cvt": {"depth": [1, 2, 3]},  # transformers indexes drop_path_rates by stage: depth[i] > i
    "FocalNet": {"depths": [1, 1, 2, 1]},
    "Hiera": {"depths": [1, 1, 2, 1]},
    "HGNetV2": {},
}
HF: dict[str, Spec] = {name: Spec(_hf(name, **cfg), _image(224)) for name, cfg in _HF_CONFIGS.items()}


# ---------------------------------------------------------------- torchvision

def _tv(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision
        torch.manual_seed(0)
        return torchvision.models.get_model(name, weights=None, **kwargs).eval()
    return build


def _images(size: int) -> Callable[[], tuple[Any, ...]]:
    """Detectors take a list of images (any sizes)."""
    def make() -> tuple[Any, ...]:
        torch.manual_seed(0)
        return ([torch.rand(3, size, size)],)
    return make


def _frames(size: int) -> Callable[[], tuple[Any, ...]]:
    def make() -> tuple[Any, ...]:
        torch.manual_seed(0)
        return torch.rand(1, 3, size, size), torch.rand(1, 3, size, size)
    return make


# detectors keep every candidate (score threshold 0): random-init scores are all below the default
TV: dict[str, Spec] = {
    "fasterrcnn_mobilenet_v3_large_320_fpn": Spec(
        _tv("fasterrcnn_mobilenet_v3_large_320_fpn", weights_backbone=None, box_score_thresh=0.0), _images(320),
        varying=True, timeout=600),
    # RetinaNet keeps its default threshold: at 0 its post-processing of ~1.3M (anchor, class) candidates
    # made the concrete trace take 256 s and 13 GB (measured); at 0.05 random-init scores keep none
    "retinanet_resnet50_fpn": Spec(_tv("retinanet_resnet50_fpn", weights_backbone=None), _images(320),
                                   varying=True, timeout=900),
    "ssdlite320_mobilenet_v3_large": Spec(_tv("ssdlite320_mobilenet_v3_large", weights_backbone=None, score_thresh=0.0),
                                          _images(320), varying=True, timeout=600),
    "r3d_18": Spec(_tv("r3d_18"), _image(112, frames=8), timeout=600),
    "swin3d_t": Spec(_tv("swin3d_t"), _image(112, frames=8), timeout=900),
    "mvit_v2_s": Spec(_tv("mvit_v2_s"), _image(224, frames=16), timeout=1200),
    "lraspp_mobilenet_v3_large": Spec(_tv("lraspp_mobilenet_v3_large", weights_backbone=None), _image(224)),
    "raft_small": Spec(_tv("raft_small"), _frames(128), timeout=600),
}

SPECS: dict[str, dict[str, Spec]] = {"transformers": HF, "torchvision": TV, "hand-written": HAND}
