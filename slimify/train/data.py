"""Data sets: the embedded digits set (no download, for the demo and tests) and ImageFolder trees
preprocessed the way the model itself expects.

    >>> train, val = digits("train"), digits("val")
    >>> len(train), len(val), tuple(train[0][0].shape)
    (1437, 360, (3, 32, 32))
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from slimify.errors import SlimifyError
from slimify.preprocess import IMAGENET_MEAN, IMAGENET_STD, DataConfig, own_input_size
from slimify.train.data_config import recorded_data_config, resolved_data_config

__all__ = ["DigitsDataset", "digits", "image_folder", "load_image", "model_transform", "recorded_input_size",
           "IMAGENET_MEAN", "IMAGENET_STD"]

DIGITS_VAL_FRACTION = 0.2  # of each class, held out for validation (stratified, fixed seed)


@lru_cache(maxsize=4)
def _digits_tensors(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All 1797 digits as (N, 1, size, size) floats in [-1, 1], labels, and the validation mask."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    images = (images - 0.5) / 0.5
    labels = torch.tensor(bunch.target, dtype=torch.long)
    _, val_idx = train_test_split(range(len(labels)), test_size=DIGITS_VAL_FRACTION,
                                  stratify=bunch.target, random_state=0)
    val_mask = torch.zeros(len(labels), dtype=torch.bool)
    val_mask[torch.tensor(sorted(val_idx))] = True
    return images, labels, val_mask


class DigitsDataset(Dataset):
    """scikit-learn's 8x8 digits (shipped inside scikit-learn), upscaled to 3 x size x size.

    The split is fixed (stratified, 80/20, seed 0). Training images get a random shift of up to
    ``shift`` pixels; the randomness comes from torch's global RNG, so a seeded loader makes it
    reproducible.
    """

    classes = list(range(10))

    def __init__(self, split: str = "train", size: int = 32, augment: bool | None = None, shift: int = 2):
        if split not in ("train", "val", "all"):
            raise SlimifyError(f"digits split must be 'train', 'val' or 'all', got {split!r}")
        images, labels, val_mask = _digits_tensors(size)
        keep = {"train": ~val_mask, "val": val_mask, "all": torch.ones_like(val_mask)}[split]
        self.images, self.labels = images[keep], labels[keep]
        self.split = split
        self.augment = split == "train" if augment is None else augment
        self.shift = shift

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment and self.shift > 0:
            s = self.shift
            dx, dy = (int(v) for v in torch.randint(-s, s + 1, (2,)))
            image = F.pad(image, (s, s, s, s), value=-1.0)[:, s + dy: s + dy + image.shape[1],
                                                           s + dx: s + dx + image.shape[2]]
        return image.expand(3, -1, -1).contiguous(), int(self.labels[index])


def digits(split: str = "train", size: int = 32, augment: bool | None = None) -> DigitsDataset:
    """The embedded digits data set: ``split`` is "train" (1437 images), "val" (360) or "all"."""
    return DigitsDataset(split, size=size, augment=augment)


def recorded_input_size(model: nn.Module) -> tuple[int, int, int] | None:
    """The (C, H, W) a slimmable model was converted with (``example_shape`` in its state and in
    its ``.slim`` file), or None for a plain model or one without a recorded image shape."""
    import slimify

    if not slimify.is_slimmable(model):
        return None
    shape = slimify.state.get_state(model).record.example_shape
    if not shape or len(shape) != 4:
        return None
    return int(shape[1]), int(shape[2]), int(shape[3])


def _size3(size: int | tuple[int, ...] | list[int]) -> tuple[int, int, int]:
    if isinstance(size, int):
        return 3, size, size
    if len(size) == 2:
        return 3, int(size[0]), int(size[1])
    if len(size) == 3:
        return int(size[0]), int(size[1]), int(size[2])
    raise SlimifyError(f"input size must be H, (H, W) or (C, H, W), got {size!r}")


def _timm_transform(model: nn.Module, train: bool, cfg: dict[str, Any],
                    augment: dict[str, Any]) -> Callable[[Any], torch.Tensor] | None:
    """timm's pipeline for a timm model (one with a pretrained config) or a recipe's augmentation."""
    if not (getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)) and not (train and augment):
        return None
    from timm.data import create_transform

    return create_transform(**cfg, is_training=train, **(augment if train else {}))


def model_transform(model: nn.Module, train: bool, weights: str | None = None,
                    input_size: int | tuple[int, ...] | None = None,
                    augment: dict[str, Any] | None = None,
                    data_config: DataConfig | None = None) -> Callable[[Any], torch.Tensor]:
    """The preprocessing ``model`` expects at its input size: timm's pipeline for timm models,
    the torchvision weights' transforms when ``weights`` names them (e.g.
    ``"ResNet18_Weights.IMAGENET1K_V1"``) and no data config is given or recorded, else
    torchvision's (random-resized crop + flip for training, resize to size / crop_pct + center
    crop else).

    The size is ``input_size`` if given, else the one the model was converted with (so a model
    converted at 32 px is trained and evaluated at 32 px, not at timm's 224), else the model's
    own default (timm's config; 224 otherwise). Crop percentage, mean, std and interpolation come
    from ``data_config``, else the one recorded on the model, else timm's pretrained config, else
    ImageNet's with a 0.875 crop (:func:`slimify.train.data_config.resolved_data_config`).
    ``augment`` adds ``timm.data.create_transform`` training arguments (RandAugment, random
    erasing: see :func:`slimify.train.augment.augment_args`)."""
    from torchvision import transforms as T

    size = _size3(input_size) if input_size is not None else recorded_input_size(model)
    cfg = resolved_data_config(model, size or own_input_size(model), data_config)
    timm_tf = _timm_transform(model, train, cfg, augment or {})
    if timm_tf is not None:
        return timm_tf
    _, h, w = cfg["input_size"]
    if weights is not None and not train and data_config is None and recorded_data_config(model) is None:
        from torchvision.models import get_weight

        preset = get_weight(weights).transforms
        return preset() if size is None else preset(crop_size=h, resize_size=int(round(h / 0.875)))
    mode = T.InterpolationMode(cfg["interpolation"])
    normalize = [T.ToTensor(), T.Normalize(cfg["mean"], cfg["std"])]
    if train:
        return T.Compose([T.RandomResizedCrop((h, w), interpolation=mode), T.RandomHorizontalFlip(), *normalize])
    return T.Compose([T.Resize(int(round(min(h, w) / cfg["crop_pct"])), interpolation=mode), T.CenterCrop((h, w)),
                      *normalize])


def load_image(path: str) -> Any:
    """torchvision's image loader, but a file it cannot decode is a SlimifyError naming the file."""
    from PIL import Image
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise SlimifyError(f"{path} is not a readable image ({type(e).__name__}): remove or replace it") from None


def image_folder(root: str | Path, model: nn.Module, train: bool, weights: str | None = None,
                 input_size: int | tuple[int, ...] | None = None, augment: dict[str, Any] | None = None,
                 data_config: DataConfig | None = None) -> Dataset:
    """A torchvision ImageFolder at ``root`` (one sub-folder per class) with the model's transform
    (at ``input_size``, default the model's recorded size; ``data_config``, default the model's
    recorded one: see :func:`model_transform`)."""
    from torchvision.datasets import ImageFolder

    root = Path(root)
    if not root.is_dir():
        raise SlimifyError(f"data directory {str(root)!r} does not exist")
    try:
        transform = model_transform(model, train, weights, input_size, augment, data_config)
        return ImageFolder(str(root), transform=transform, loader=load_image)
    except (FileNotFoundError, RuntimeError) as e:
        raise SlimifyError(f"{root}: not an image folder (one sub-folder of images per class): {e}") from e
