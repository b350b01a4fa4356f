"""scikit-learn's digits written as 32-pixel PNGs into an ImageFolder tree, and a small timm
model trained on them at 32 px: a model whose accuracy depends on the input size it is fed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from slimify.train.data import digits

__all__ = ["write_digit_folder", "train_timm_at", "SIZE", "ARCH"]

SIZE = 32  # pixels: the size the PNGs are written at and the model is trained and converted at
ARCH = "test_resnet"  # timm's own tiny test network (default input 160 px)


def write_digit_folder(root: Path, per_split: dict[str, int] | None = None) -> Path:
    """``root/train/<digit>/*.png`` and ``root/val/<digit>/*.png`` (the digits' fixed split)."""
    per_split = per_split or {"train": 1000, "val": 360}
    for split, count in per_split.items():
        ds = digits(split, size=SIZE, augment=False)
        for i in range(min(count, len(ds))):
            image, label = ds[i]
            pixels = ((image[0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(folder / f"{i}.png")
    return root


def train_timm_at(folder: Path, epochs: int = 4, seed: int = 0) -> torch.nn.Module:
    """A plain ``ARCH`` with 10 classes trained (Adam, no augmentation) on ``folder`` through
    timm's own evaluation pipeline at ``SIZE`` pixels."""
    import timm
    from timm.data import create_transform, resolve_data_config
    from torchvision.datasets import ImageFolder

    torch.manual_seed(seed)
    model = timm.create_model(ARCH, num_classes=10)
    tf = create_transform(**resolve_data_config({"input_size": (3, SIZE, SIZE)}, model=model))
    ds = ImageFolder(str(folder), transform=tf)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.tensor(ds.targets)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for start in range(0, len(order) - 31, 32):
            idx = order[start:start + 32]
            loss = torch.nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
