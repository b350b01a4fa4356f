"""The two network families of the Fashion-MNIST benchmark, each built by its library's own
constructor at a size that trains on 2 CPU cores, and importable as model sources
(``slimify --trust-source benchmarks convert benchmarks.fashion_nets:resnet …``) so the retrofit
row runs through the CLI exactly as a user with an own model definition would.

    >>> resnet()(torch.randn(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""
from __future__ import annotations

import torch.nn as nn

__all__ = ["resnet", "mobilenet", "NETS", "reinit"]


def resnet(num_classes: int = 10, in_chans: int = 1) -> nn.Module:
    """timm's ResNet constructor: BasicBlock, one block per stage, channels 32-64-128-256 (a
    ResNet-10 at half width; 4.8 MMACs at 28 px). Grey input: ``in_chans=1``."""
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, (1, 1, 1, 1), num_classes=num_classes, in_chans=in_chans, stem_width=32,
                  channels=(32, 64, 128, 256))


# torchvision's MobileNetV2 table (t, c, n, s) with the second stride removed: 28 px inputs end at 2x2, not 1x1
SMALL_IMAGE_SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                       [6, 320, 1, 1]]


def mobilenet(num_classes: int = 10) -> nn.Module:
    """torchvision's MobileNetV2 constructor at width multiplier 0.35 (3.5 MMACs at 28 px), with the
    small-image stride table above; three input channels (grey images are replicated)."""
    from torchvision.models import MobileNetV2

    return MobileNetV2(num_classes=num_classes, width_mult=0.35, inverted_residual_setting=SMALL_IMAGE_SETTING)


# benchmark name -> (model source spec, input size C x H x W)
NETS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "resnet": ("benchmarks.fashion_nets:resnet", (1, 28, 28)),
    "mobilenet": ("benchmarks.fashion_nets:mobilenet", (3, 28, 28)),
}


def reinit(model: nn.Module) -> nn.Module:
    """Fresh weights for a network of any width, the way both constructors initialise theirs
    (He normal, fan-out, for convolutions; BatchNorm 1/0; linear layers their default), so an
    individually trained narrow network starts like its constructor would have built it — slicing
    a wide random init would start it with too small weights."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
    return model
