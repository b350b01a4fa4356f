"""The representative model list of the default test suite and helpers to build them."""
from __future__ import annotations

import timm
import torch
import torch.nn as nn
import torchvision

__all__ = ["ZOO", "build", "macs"]

# name → (input size); "tv:" models come from torchvision, the rest from timm
ZOO: dict[str, int] = {
    "tv:resnet18": 224, "tv:resnet50": 224, "tv:resnext50_32x4d": 224, "tv:wide_resnet50_2": 224,
    "tv:mobilenet_v2": 224, "tv:mobilenet_v3_small": 224, "tv:efficientnet_b0": 224, "tv:densenet121": 224,
    "tv:shufflenet_v2_x0_5": 224, "tv:regnet_y_400mf": 224, "tv:convnext_tiny": 224, "tv:googlenet": 224,
    "tv:inception_v3": 299, "tv:squeezenet1_0": 224, "tv:vgg11_bn": 224, "tv:alexnet": 224, "tv:mnasnet0_5": 224,
    "resnet10t": 224, "efficientnet_b0": 224, "mobilenetv3_small_050": 224, "convnext_atto": 224, "dla34": 224,
    "cspdarknet53": 256, "res2net50_26w_4s": 224, "ghostnet_050": 224, "repvgg_a0": 224, "regnety_002": 224,
    "densenet121": 224, "dpn48b": 224, "mixnet_s": 224, "selecsls42b": 224,
}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("tv:"):
        kwargs = {"aux_logits": False, "init_weights": False} if name in ("tv:googlenet", "tv:inception_v3") else {}
        return torchvision.models.get_model(name[3:], weights=None, **kwargs).eval()
    return timm.create_model(name, pretrained=False).eval()


def macs(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2
