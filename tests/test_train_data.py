"""Data: the embedded digits set, resumable sharded sampling, model preprocessing."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from slimify import SlimifyError
from slimify.train.data import digits, image_folder, model_transform
from slimify.train.loader import ResumableSampler, SeededDataset, train_loader


def test_digits_shapes_and_fixed_split() -> None:
    train, val = digits("train"), digits("val")
    assert (len(train), len(val), len(digits("all"))) == (1437, 360, 1797)
    image, label = val[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= label < 10
    assert -1.0 <= float(image.min()) and float(image.max()) <= 1.0
    counts = torch.bincount(val.labels, minlength=10)
    assert int(counts.min()) >= 34 and int(counts.max()) <= 38  # stratified
    assert torch.equal(digits("val").images, val.images)  # deterministic
    whole = digits("all")  # train and val partition the whole set
    assert torch.equal(torch.bincount(torch.cat([train.labels, val.labels])), torch.bincount(whole.labels))
    assert torch.allclose(train.images.sum() + val.images.sum(), whole.images.sum())
    assert not val.augment and train.augment


def test_digits_augmentation_is_random_but_seedable() -> None:
    train = digits("train")
    torch.manual_seed(0)
    a = [train[0][0] for _ in range(6)]
    assert any(not torch.equal(a[0], b) for b in a[1:])
    torch.manual_seed(0)
    assert all(torch.equal(x, train[0][0]) for x in a)
    with pytest.raises(SlimifyError, match="split"):
        digits("test")


def test_sampler_shards_and_skips() -> None:
    data = list(range(100))
    full = list(ResumableSampler(data, batch_size=8, seed=1, epoch=3))
    assert len(full) == 96 and len({i for i, _ in full}) == 96
    assert list(ResumableSampler(data, batch_size=8, seed=1, epoch=3, start_batch=5)) == full[40:]
    assert full != list(ResumableSampler(data, batch_size=8, seed=1, epoch=4))
    ranks = [[i for i, _ in ResumableSampler(data, 8, seed=1, epoch=3, rank=r, world=2)] for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and len(ranks[0]) == len(ranks[1]) == 48


def test_seeded_samples_are_reproducible_and_leave_global_rng_alone() -> None:
    data = SeededDataset(digits("train"))
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    a, b = data[(0, 42)][0], data[(0, 42)][0]
    assert torch.equal(a, b)
    assert torch.equal(before[0], torch.get_rng_state()) and before[1] == random.getstate()
    assert np.array_equal(before[2], np.random.get_state()[1])
    shifted = {data[(0, s)][0].sum().item() for s in range(10)}
    assert len(shifted) > 1


def test_train_loader_resumes_mid_epoch_with_same_batches() -> None:
    data = digits("train")
    full = [x for x, _ in train_loader(data, 64, seed=0, epoch=1)]
    rest = [x for x, _ in train_loader(data, 64, seed=0, epoch=1, start_batch=10)]
    assert len(full) == 1437 // 64 and len(rest) == len(full) - 10
    assert all(torch.equal(a, b) for a, b in zip(full[10:], rest))


def test_worker_processes_give_the_same_batches() -> None:
    data = torch.utils.data.Subset(digits("train"), range(96))
    in_process = [x for x, _ in train_loader(data, 32, seed=0, epoch=2)]
    workers = [x for x, _ in train_loader(data, 32, seed=0, epoch=2, workers=2)]
    assert len(workers) == 3 and all(torch.equal(a, b) for a, b in zip(in_process, workers))


def test_model_transform_and_image_folder(tmp_path) -> None:
    import timm

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((40, 50, 3), i * 100, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    model = timm.create_model("resnet18", pretrained=False, num_classes=2)
    ds = image_folder(tmp_path, model, train=False)
    assert len(ds) == 4 and ds.classes == ["cat", "dog"] and ds[0][0].shape == (3, 224, 224)
    plain = torch.nn.Conv2d(3, 4, 3)  # no timm config: ImageNet defaults
    assert model_transform(plain, train=True)(Image.new("RGB", (300, 260))).shape == (3, 224, 224)
    with pytest.raises(SlimifyError, match="does not exist"):
        image_folder(tmp_path / "missing", model, train=True)
