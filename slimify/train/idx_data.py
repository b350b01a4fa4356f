"""IDX image sets — Fashion-MNIST as Debian's ``dataset-fashion-mnist`` installs it, MNIST, or any
directory holding the four IDX files — read with torchvision's own ``MNIST`` readers and prepared
for the model's recorded input (resized once, channels replicated, normalised).

Splits: ``train`` and ``val`` divide the published training set (``VAL_SIZE`` images, stratified,
fixed seed, held out for any selection: early stopping, search, calibration checks); ``test`` is
the published test set, for the figures one reports.

    >>> train = idx_images("fashion-mnist", "train", size=(1, 28, 28))
    >>> len(train), tuple(train[0][0].shape), train.classes[0]
    (54000, (1, 28, 28), 'T-shirt/top')
"""
from __future__ import annotations

import gzip
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from slimify.errors import SlimifyError

__all__ = ["FASHION_MNIST", "FASHION_MNIST_DIR", "FASHION_MNIST_PACKAGE", "IDX_FILES", "VAL_SIZE", "IdxImages",
           "idx_images", "idx_root", "is_idx_directory", "idx_classes"]

FASHION_MNIST = "fashion-mnist"  # the --data name of Fashion-MNIST
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package puts the four files
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"  # the Debian package that installs them
# split of the published files -> (images, labels) file names, without the optional .gz
IDX_FILES: dict[str, tuple[str, str]] = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                                         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
VAL_SIZE = 6000  # images of the published training set held out as the validation split (10% of Fashion-MNIST's)
SPLIT_SEED = 0  # seed of the stratified train/val division: the same on every machine and in every command


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def is_idx_directory(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding the four IDX files (plain or ``.gz``)."""
    root = Path(path)
    return root.is_dir() and all(_find(root, n) is not None for pair in IDX_FILES.values() for n in pair)


def idx_root(data: str) -> Path:
    """The directory of a ``--data`` that names IDX images: ``fashion-mnist`` or a directory."""
    if data == FASHION_MNIST:
        if not is_idx_directory(FASHION_MNIST_DIR):
            raise SlimifyError(f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR}: install it with "
                               f"'apt-get install -y {FASHION_MNIST_PACKAGE}' (or pass a directory holding the four "
                               "IDX files)")
        return FASHION_MNIST_DIR
    root = Path(data)
    if not is_idx_directory(root):
        missing = [n for pair in IDX_FILES.values() for n in pair if _find(root, n) is None]
        raise SlimifyError(f"{data}: not an IDX directory (missing {', '.join(missing)}[.gz])")
    return root


def _stage(root: Path, staged: Path) -> None:
    """Lay the files out the way torchvision's MNIST reads them: ``<root>/MNIST/raw/<name>``, uncompressed."""
    raw = staged / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for pair in IDX_FILES.values():
        for name in pair:
            source = _find(root, name)
            assert source is not None  # idx_root checked
            opener = gzip.open if source.suffix == ".gz" else open
            try:
                with opener(source, "rb") as src, open(raw / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError) as e:
                raise SlimifyError(f"{source}: cannot be read ({e}): reinstall or replace the file") from None


def _read(raw_dir: Path, split: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) uint8 images and (N,) labels of one published split, with what is wrong named."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    images_name, labels_name = IDX_FILES[split]
    try:
        images = read_image_file(str(raw_dir / images_name))
    except (AssertionError, RuntimeError, ValueError, IndexError) as e:
        raise SlimifyError(f"{root / images_name}: not a valid IDX image file (truncated or damaged: "
                           f"{type(e).__name__}): reinstall or replace it") from None
    try:
        labels = read_label_file(str(raw_dir / labels_name))
    except (AssertionError, RuntimeError, ValueError, IndexError) as e:
        raise SlimifyError(f"{root / labels_name}: not a valid IDX label file (truncated or damaged: "
                           f"{type(e).__name__}): reinstall or replace it") from None
    if len(images) != len(labels):
        raise SlimifyError(f"{root}: {images_name} holds {len(images)} images but {labels_name} {len(labels)} labels: "
                           "the files do not belong together")
    return images, labels.long()


@lru_cache(maxsize=2)
def _published(root: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Both published splits of the IDX directory ``root``, read once per process."""
    with tempfile.TemporaryDirectory(prefix="slimify-idx-") as tmp:
        _stage(Path(root), Path(tmp))
        raw = Path(tmp) / "MNIST" / "raw"
        return {split: _read(raw, split, Path(root)) for split in IDX_FILES}


def _val_mask(labels: torch.Tensor) -> torch.Tensor:
    """``VAL_SIZE`` training images, the same share of every class, chosen by a fixed seed."""
    from sklearn.model_selection import train_test_split

    size = min(VAL_SIZE, len(labels) // 5)
    counts = torch.bincount(labels)
    stratify = labels.numpy() if int(counts[counts > 0].min()) >= 2 else None
    _, val_idx = train_test_split(range(len(labels)), test_size=size, stratify=stratify, random_state=SPLIT_SEED)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[torch.tensor(sorted(val_idx))] = True
    return mask


def idx_classes(root: Path) -> list[str]:
    """Class names: Fashion-MNIST's own for its directory, else the label values."""
    if root.resolve() == FASHION_MNIST_DIR.resolve():
        from torchvision.datasets import FashionMNIST

        return list(FashionMNIST.classes)
    labels = _published(str(root))["train"][1]
    return [str(i) for i in range(int(labels.max()) + 1)]


@lru_cache(maxsize=8)
def _prepared(root: str, split: str, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's images as (N, 1, height, width) floats in [0, 1] (resized once), and its labels."""
    part = "test" if split == "test" else "train"
    images, labels = _published(root)[part]
    if split != "test":
        keep = _val_mask(labels) if split == "val" else ~_val_mask(labels)
        images, labels = images[keep], labels[keep]
    x = images.unsqueeze(1).float() / 255.0
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return x, labels


@lru_cache(maxsize=2)
def _statistics(root: str) -> tuple[float, float]:
    """Mean and std of the published training images' pixels (in [0, 1]): the normalisation of every split."""
    pixels = _published(root)["train"][0].float() / 255.0
    return float(pixels.mean()), float(pixels.std())


class IdxImages(Dataset):
    """One split of an IDX image set at ``size`` = (C, H, W): grey images replicated to C channels
    (1 or 3) and normalised by the training pixels' mean and std. Training images get a random
    shift of up to ``H // 14`` pixels (2 at 28 px) and a horizontal flip; the randomness comes
    from torch's global RNG, so a seeded loader (``SeededDataset``) makes it reproducible."""

    def __init__(self, root: str | Path, split: str, size: tuple[int, int, int], augment: bool | None = None,
                 indices: torch.Tensor | None = None):
        if split not in ("train", "val", "test"):
            raise SlimifyError(f"IDX split must be 'train', 'val' or 'test', got {split!r}")
        channels, height, width = size
        if channels not in (1, 3):
            raise SlimifyError(f"the model takes {channels} input channels; grey IDX images fit models with 1 or 3 "
                               "(convert it with --input-size 1x28x28 or 3x28x28)")
        self.root, self.split, self.channels = Path(root), split, channels
        images, labels = _prepared(str(self.root), split, height, width)
        if indices is not None:
            images, labels = images[indices], labels[indices]
        mean, std = _statistics(str(self.root))
        self.images, self.labels = (images - mean) / std, labels
        self.fill = (0.0 - mean) / std  # what a blank pixel becomes: the padding of a shift
        self.augment = split == "train" if augment is None else augment
        self.shift = max(1, height // 14)
        self.classes = idx_classes(self.root)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.augment:
            s, (h, w) = self.shift, image.shape[-2:]
            dx, dy = (int(v) for v in torch.randint(-s, s + 1, (2,)))
            image = F.pad(image, (s, s, s, s), value=self.fill)[:, s + dy: s + dy + h, s + dx: s + dx + w]
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return image.expand(self.channels, -1, -1).contiguous(), int(self.labels[index])


def idx_images(data: str, split: str, size: tuple[int, int, int], augment: bool | None = None) -> IdxImages:
    """The ``split`` of ``data`` (``fashion-mnist`` or an IDX directory) at ``size`` = (C, H, W)."""
    return IdxImages(idx_root(data), split, size, augment)
