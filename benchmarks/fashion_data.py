"""Data for the Fashion-MNIST benchmark: IDX files written by the benchmark itself (a stratified
subset of the published training set, the whole published test set), so every row — the Python
API and the CLI alike — reads the same images through ``--data DIR``.

    >>> write_idx(Path("x-images-idx3-ubyte"), torch.zeros(5, 28, 28, dtype=torch.uint8))
"""
from __future__ import annotations

import struct
from pathlib import Path

import torch

__all__ = ["write_idx", "subset_directory"]

_TYPE = {torch.uint8: 0x08}  # IDX type codes slimify's data sets use


def write_idx(path: Path, values: torch.Tensor) -> Path:
    """Write an unsigned-byte tensor (images N x H x W, or labels N) as an IDX file (big-endian sizes)."""
    values = values.to(torch.uint8).contiguous()
    header = struct.pack(">BBBB", 0, 0, _TYPE[torch.uint8], values.dim()) + struct.pack(f">{values.dim()}I",
                                                                                         *values.shape)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(header + values.numpy().tobytes())
    tmp.replace(path)
    return path


def subset_directory(out: Path, train_images: int, test_images: int | None = None, seed: int = 0) -> Path:
    """``out`` holding the four IDX files: ``train_images`` of Fashion-MNIST's published training
    images (the same number per class, chosen by ``seed``) and the first ``test_images`` of its test
    set (all by default). Written once; a directory already complete is reused."""
    from slimify.train.idx_data import FASHION_MNIST, IDX_FILES, _published, idx_root, is_idx_directory

    if is_idx_directory(out):
        return out
    published = _published(str(idx_root(FASHION_MNIST)))
    images, labels = published["train"]
    g = torch.Generator().manual_seed(seed)
    classes = int(labels.max()) + 1
    per_class = train_images // classes
    keep = torch.cat([torch.nonzero(labels == c).flatten()[torch.randperm(int((labels == c).sum()), generator=g)]
                      [:per_class] for c in range(classes)]).sort().values
    test_x, test_y = published["test"]
    n_test = len(test_y) if test_images is None else test_images
    out.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in (("train", (images[keep], labels[keep])), ("test", (test_x[:n_test], test_y[:n_test]))):
        write_idx(out / IDX_FILES[split][1], y)
        write_idx(out / IDX_FILES[split][0], x)  # images last: the directory counts as complete once they exist
    return out
