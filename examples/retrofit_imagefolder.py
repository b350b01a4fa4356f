"""Retrofit a trained checkpoint into a slimmable network on your own images: load the plain
weights, adapt the classifier to your classes, convert, fine-tune all switches jointly,
re-calibrate each switch's BatchNorm, evaluate every width and save a .slim file.

    python examples/retrofit_imagefolder.py --model resnet18 --checkpoint resnet18.pth \
        --data ~/data/flowers --epochs 5 --out flowers.slim

DATA is an ImageFolder (one sub-folder of images per class), or a folder with train/ and val/
ImageFolders inside.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn as nn
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

import slimify
from slimify.store.sources import create, set_source
from slimify.train import evaluate, finetune

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def image_folders(root: Path, size: int) -> tuple[ImageFolder, ImageFolder]:
    """Training (random crops, flips) and validation (center crop) sets at ``size`` pixels."""
    normalize = [T.ToTensor(), T.Normalize(MEAN, STD)]
    train_dir = root / "train" if (root / "train").is_dir() else root
    val_dir = root / "val" if (root / "val").is_dir() else train_dir
    train = ImageFolder(str(train_dir), T.Compose([T.RandomResizedCrop(size, scale=(0.35, 1.0)),
                                                   T.RandomHorizontalFlip(), *normalize]))
    val = ImageFolder(str(val_dir), T.Compose([T.Resize(int(size / 0.875)), T.CenterCrop(size), *normalize]))
    return train, val


def new_head(model: nn.Module, spec: str, num_classes: int) -> None:
    """Replace the classifier for ``num_classes`` and record it, so the .slim file rebuilds it."""
    if hasattr(model, "reset_classifier"):  # timm models
        model.reset_classifier(num_classes)
    else:  # torchvision: the last Linear layer is the classifier
        name, old = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], nn.Linear(old.in_features, num_classes))
    set_source(model, spec, num_classes=num_classes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="timm name, torchvision:NAME or slimify:NAME")
    parser.add_argument("--checkpoint", help="plain weights of MODEL (.pth / .safetensors); default: random init")
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--switches", default="0.25,0.5,0.75,1.0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--run-dir", default="runs/retrofit", help="training checkpoint and log")
    parser.add_argument("--out", default="retrofit.slim")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)

    train, val = image_folders(args.data, args.input_size)
    num_classes = len(train.classes)

    # 1. the plain trained model, with a classifier for these classes
    model = create(args.model, checkpoint=args.checkpoint)
    new_head(model, args.model, num_classes)

    # 2. slimmable, in place; the widest switch still computes the checkpoint's features
    switches = tuple(float(s) for s in args.switches.split(","))
    slimify.convert(model.eval(), switches=switches, example_input=torch.randn(1, 3, args.input_size, args.input_size))

    # 3. all switches in every step (narrow ones distil from the widest), then BN re-calibration
    steps = max(1, len(train) // args.batch_size)
    finetune(model, train, "retrofit", out_dir=args.run_dir, epochs=args.epochs, batch_size=args.batch_size,
             lr=args.lr, workers=args.workers, calibrate_batches=min(100, steps), eval_every=0, progress=False)

    # 4. accuracy of every width, then save
    print(evaluate(model, val, batch_size=args.batch_size).table())
    slimify.save(model, args.out, overwrite=args.force)
    print(f"saved {args.out}; next: slimify profile {args.out}")


if __name__ == "__main__":
    main()
