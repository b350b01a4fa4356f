"""The representative model list of the default test suite and helpers to build them."""
from __future__ import annotations

import timm
import torch
import torch.nn as nn
import torchvision

__all__ = ["ZOO", "build", "macs"]

# "tv:" models come from torchvision, the rest from timm
ZOO: dict[str, int] = {  # input side: small enough for a fast suite, large enough for every stride
    "tv:resnet18": 128, "tv:resnet50": 128, "tv:resnext50_32x4d": 128, "tv:wide_resnet50_2": 128,
    "tv:mobilenet_v2": 128, "tv:mobilenet_v3_small": 128, "tv:efficientnet_b0": 128, "tv:densenet121": 128,
    "tv:shufflenet_v2_x0_5": 128, "tv:regnet_y_400mf": 128, "tv:convnext_tiny": 128, "tv:googlenet": 128,
    "tv:inception_v3": 160, "tv:squeezenet1_0": 128, "tv:vgg11_bn": 128, "tv:alexnet": 128, "tv:mnasnet0_5": 128,
    "resnet10t": 128, "efficientnet_b0": 128, "mobilenetv3_small_050": 128, "convnext_atto": 128, "dla34": 128,
    "cspdarknet53": 128, "res2net50_26w_4s": 128, "ghostnet_050": 128, "repvgg_a0": 128, "regnety_002": 128,
    "densenet121": 128, "dpn48b": 128, "mixnet_s": 128, "selecsls42b": 128,
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


def assert_original_checkpoint_loads(model: nn.Module, fresh: nn.Module, x: torch.Tensor) -> None:
    """A checkpoint of the original architecture (``fresh``, re-initialised here) loads into the
    converted ``model`` unchanged, and the model then computes what ``fresh`` computes."""
    for p in fresh.parameters():
        torch.nn.init.normal_(p, std=0.02)
    with torch.no_grad():
        reference = fresh(x)
    model.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        again = model(x)
    assert (again - reference).abs().max() <= 1e-5 * reference.abs().max()
