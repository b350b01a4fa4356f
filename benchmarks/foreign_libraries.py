"""The library list of the foreign-model benchmark (``benchmarks/foreign.py``): models built by the
libraries practitioners build with (diffusers, MONAI, segmentation_models_pytorch, ultralytics,
open_clip, timm backbones with ``features_only=True``, torchvision's Mask R-CNN), random init, no
download (each library's offline switch is set before it is imported). The packages are the
``bench`` extra of pyproject.toml; a missing one fails its models at build with the reason.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from benchmarks.foreign_models import Spec

__all__ = ["LIBRARY_SPECS", "offline"]


def offline() -> None:
    """No library may download anything: weights, configs, fonts, update checks."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE", "YOLO_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")


def _seeded(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        offline()
        torch.manual_seed(0)
        return build().eval()
    return make


def _image(size: int, channels: int = 3) -> Callable[[], tuple[Any, ...]]:
    def make() -> tuple[Any, ...]:
        torch.manual_seed(0)
        return (torch.randn(1, channels, size, size),)
    return make


# ---------------------------------------------------------------- diffusers

def _unet2d() -> nn.Module:
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=64, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(64, 128, 128), norm_num_groups=32,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


DIFFUSERS: dict[str, Spec] = {  # the timestep is a keyword input: convert(..., example_kwargs={"timestep": t})
    "UNet2DModel": Spec(_seeded(_unet2d), _image(64), kwargs=lambda: {"timestep": torch.tensor([10])}),
}


# ---------------------------------------------------------------- MONAI

def _unetr() -> nn.Module:
    from monai.networks.nets import UNETR
    return UNETR(in_channels=1, out_channels=2, img_size=(64, 64), spatial_dims=2, feature_size=16, hidden_size=384,
                 mlp_dim=1536, num_heads=6)


def _swin_unetr() -> nn.Module:
    from monai.networks.nets import SwinUNETR
    return SwinUNETR(in_channels=1, out_channels=2, spatial_dims=2, feature_size=24)


MONAI: dict[str, Spec] = {
    "UNETR_2d": Spec(_seeded(_unetr), _image(64, 1)),
    "SwinUNETR_2d": Spec(_seeded(_swin_unetr), _image(64, 1), timeout=600),
}


# ---------------------------------------------------------------- segmentation_models_pytorch

def _smp(arch: str, encoder: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import segmentation_models_pytorch as smp
        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, classes=2)
    return _seeded(build)


SMP: dict[str, Spec] = {f"{arch}_resnet34": Spec(_smp(arch, "resnet34"), _image(128)) for arch in ("Linknet", "Unet", "FPN")}


# ---------------------------------------------------------------- ultralytics

def _yolo(cfg: str, rtdetr: bool = False) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from ultralytics.nn.tasks import DetectionModel, RTDETRDetectionModel
        return (RTDETRDetectionModel if rtdetr else DetectionModel)(cfg, verbose=False)
    return _seeded(build)


ULTRALYTICS: dict[str, Spec] = {
    "yolov8n": Spec(_yolo("yolov8n.yaml"), _image(320), timeout=600),
    "rtdetr-resnet50": Spec(_yolo("rtdetr-resnet50.yaml", rtdetr=True), _image(320), timeout=900),
}


# ---------------------------------------------------------------- open_clip

def _clip_visual(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import open_clip
        return open_clip.create_model(name, pretrained=None).visual
    return _seeded(build)


OPEN_CLIP: dict[str, Spec] = {
    "RN50.visual": Spec(_clip_visual("RN50"), _image(224), timeout=600),
    "ViT-B-16.visual": Spec(_clip_visual("ViT-B-16"), _image(224), timeout=600),
}


# ---------------------------------------------------------------- timm backbones as detectors use them

def _features(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm
        return timm.create_model(name, pretrained=False, features_only=True)
    return _seeded(build)


TIMM_FEATURES: dict[str, Spec] = {f"{n}.features_only": Spec(_features(n), _image(224))
                                  for n in ("resnet50", "convnext_tiny", "efficientnet_b0")}


# ---------------------------------------------------------------- torchvision, whole detector with masks

def _maskrcnn() -> nn.Module:
    import torchvision
    return torchvision.models.get_model("maskrcnn_resnet50_fpn", weights=None, weights_backbone=None,
                                        box_score_thresh=0.0, box_detections_per_img=10)


def _images(size: int) -> tuple[Any, ...]:
    torch.manual_seed(0)
    return ([torch.rand(3, size, size)],)


TORCHVISION_WHOLE: dict[str, Spec] = {
    "maskrcnn_resnet50_fpn": Spec(_seeded(_maskrcnn), lambda: _images(320), varying=True, timeout=900),
}

LIBRARY_SPECS: dict[str, dict[str, Spec]] = {
    "diffusers": DIFFUSERS, "monai": MONAI, "smp": SMP, "ultralytics": ULTRALYTICS, "open_clip": OPEN_CLIP,
    "timm features": TIMM_FEATURES, "torchvision (whole)": TORCHVISION_WHOLE,
}
