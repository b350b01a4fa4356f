"""Turn what a user types (a model name, a ``.slim`` file, a training checkpoint; ``digits`` or a
directory) into a slimmable model and data sets, recording how to rebuild the model as plain data."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset

import slimify
from slimify.errors import SlimifyError
from slimify.preprocess import DataConfig
from slimify.store.sources import check_state_dict
from slimify.train.checkpoint import load_checkpoint, save_checkpoint
from slimify.train.data import digits, image_folder, recorded_input_size
from slimify.train.data_config import record_data_config
from slimify.train.idx_data import FASHION_MNIST, idx_classes, idx_images, idx_root, is_idx_directory

__all__ = ["load_slimmable", "convert_spec", "model_from_spec", "resolve_data", "count_classes", "save_model",
           "has_validation", "in_memory", "default_input_size", "DIGITS", "FASHION_MNIST"]

DIGITS = "digits"  # the data argument that selects the embedded digits set


def _is_idx(data: str) -> bool:
    return data == FASHION_MNIST or is_idx_directory(data)


def in_memory(data: str) -> bool:
    """Data sets held as tensors in this process (digits, IDX): DataLoader workers would only add cost."""
    return data == DIGITS or _is_idx(data)


def has_validation(data: str) -> bool:
    """Whether ``data`` has a validation split of its own (digits, IDX sets, a folder with ``val/``)."""
    return in_memory(data) or (Path(data) / "val").is_dir()


def default_input_size(data: str) -> tuple[int, int, int] | None:
    """The input size to convert a model name at for ``data`` when the user gives none: the
    images' own (digits 3x32x32; IDX sets 3x28x28, grey replicated for ImageNet-style stems)."""
    if data == DIGITS:
        return 3, 32, 32
    if _is_idx(data):
        return 3, 28, 28
    return None


def convert_spec(model: nn.Module, spec: dict[str, Any], reorder: str | None = None) -> nn.Module:
    """``slimify.convert`` with the switches, divisor and input size a spec records; ``reorder``
    (for trained weights: "l1", "l2", "bn") puts each group's most important channels first."""
    size = spec.get("input_size")
    example = torch.randn(1, *size) if size else None
    extra = {"reorder": reorder} if reorder else {}
    model = slimify.convert(model, switches=tuple(spec["switches"]), divisor=spec["divisor"], example_input=example,
                            **extra)
    if size:
        slimify.state.get_state(model).record.example_shape = [1, *size]  # what slimify.save records
    return model


def model_from_spec(spec: dict[str, Any], plain_weights: str | Path | None = None) -> nn.Module:
    """Build a slimmable model from a spec (no code is read from files); with ``plain_weights``
    the spec's ``reorder`` method runs before converting (a checkpoint's weights, loaded after
    rebuilding, are already in that order)."""
    if "slim" in spec:
        return _with_data_config(slimify.load(spec["slim"]), spec)
    from slimify.store.sources import create

    classes = spec.get("num_classes")
    kwargs = {**({"num_classes": classes} if classes else {}), **spec.get("model_kwargs", {})}
    model = create(spec["name"], checkpoint=plain_weights, **kwargs)
    if spec.get("switches"):
        model = convert_spec(model, spec, spec.get("reorder") if plain_weights is not None else None)
    return _with_data_config(model, spec)


def _with_data_config(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """The data config a checkpoint's spec records (finetune's), kept on the model."""
    if spec.get("data_config") and slimify.is_slimmable(model):
        record_data_config(model, DataConfig.from_dict(spec["data_config"], "the checkpoint's data config"))
    return model


def load_slimmable(source: str, checkpoint: str | None = None, switches: tuple[float, ...] | None = None,
                   divisor: int | None = None, num_classes: int | None = None, input_size: tuple[int, int, int] | None = None,
                   reorder: str | None = None, pretrained: bool = False, pretrained_tag: str | None = None,
                   model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A slimmable model and its spec from ``source``: a ``.slim`` file, a slimify training
    checkpoint (``.pt``), or a model name converted with ``switches`` (``checkpoint`` = plain
    pretrained weights to load, or ``pretrained`` = the published ones, and channels to
    ``reorder``, before converting; ``model_kwargs`` such as ``drop_path_rate`` go to the model's
    factory and are recorded in the spec)."""
    path = Path(source)
    if pretrained and (path.suffix == ".slim" or path.is_file()):
        raise SlimifyError(f"--pretrained loads published weights for a model name; {source} is a file that "
                           "carries its own weights")
    if path.suffix == ".slim":
        if not path.is_file():
            raise SlimifyError(f"model file {source!r} does not exist")
        spec: dict[str, Any] = {"slim": str(path.resolve())}
        return model_from_spec(spec), spec
    if path.is_file():
        state = load_checkpoint(path)
        spec = dict(state.get("model_spec") or {})
        if not spec:
            raise SlimifyError(f"{path} does not say how to rebuild its model (no model_spec)")
        model = model_from_spec(spec)
        check_state_dict(model.state_dict(), state.get("model") or {}, f"{path.name}'s weights")
        model.load_state_dict(state["model"])
        return model, spec
    spec = {"name": source, "num_classes": num_classes, "switches": list(switches or (0.25, 0.5, 0.75, 1.0)),
            "divisor": divisor, "input_size": list(input_size) if input_size else None, "reorder": reorder,
            **({"model_kwargs": dict(model_kwargs)} if model_kwargs else {})}
    if pretrained:
        from slimify.store.pretrained import create_pretrained
        from slimify.store.sources import source_of

        plain = create_pretrained(source, pretrained_tag, **({"num_classes": num_classes} if num_classes else {}),
                                  **(model_kwargs or {}))
        spec["name"] = spec["pretrained"] = source_of(plain).spec  # rebuilt from it, weights from the checkpoint
        return convert_spec(plain, spec, reorder), spec
    return model_from_spec(spec, plain_weights=checkpoint), spec


def count_classes(data: str) -> int | None:
    """Number of classes of a data argument (digits: 10; IDX sets: their labels; a folder: its class sub-folders)."""
    if data == DIGITS:
        return 10
    if _is_idx(data):
        return len(idx_classes(idx_root(data)))
    root = Path(data)
    root = root / "train" if (root / "train").is_dir() else root
    if not root.is_dir():
        raise SlimifyError(f"data directory {data!r} does not exist (or use '{DIGITS}' or '{FASHION_MNIST}')")
    return len([p for p in root.iterdir() if p.is_dir()]) or None


def resolve_data(data: str, model: nn.Module, train: bool, split: str | None = None,
                 input_size: tuple[int, int, int] | None = None, augment: dict[str, Any] | None = None,
                 data_config: DataConfig | None = None) -> Dataset:
    """``digits``, ``fashion-mnist``, an IDX directory or an ImageFolder directory (with ``train``/
    ``val``/``test`` sub-folders, the one ``split`` names, default by ``train``) preprocessed for
    ``model`` at ``input_size`` (default: the size the model was converted with); ``augment``:
    timm training-transform arguments for image folders (digits and IDX sets, in memory, keep
    their own random shifts unless ``no_aug``); ``data_config``: crop, mean, std, interpolation of
    image folders (default: the model's recorded or own). ``split="test"`` is the published test
    set of an IDX set, a folder's ``test/`` (else its ``val/``), and digits' val split (it has no other)."""
    split = split or ("train" if train else "val")
    shifts = train and not (augment or {}).get("no_aug", False)  # in-memory sets' own augmentation
    if data == DIGITS:
        _, h, w = input_size or recorded_input_size(model) or (3, 32, 32)
        if h != w:
            raise SlimifyError(f"the digits data set is square: input size {h}x{w} does not fit it")
        return digits("val" if split == "test" else split, size=h, augment=shifts)
    if _is_idx(data):
        size = input_size or recorded_input_size(model) or (3, 28, 28)
        return idx_images(data, split, size, augment=shifts)
    root = Path(data)
    for name in (split, "val") if split == "test" else (split,):
        if (root / name).is_dir():
            root = root / name
            break
    return image_folder(root, model, train=train, input_size=input_size, augment=augment, data_config=data_config)


def save_model(model: nn.Module, spec: dict[str, Any], path: str | Path, overwrite: bool = True) -> Path:
    """Save a model for ``slimify eval``/``calibrate``: ``.slim`` (slimify.save) when the
    path asks for it, else a model-only training-format checkpoint."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise SlimifyError(f"{path} already exists: pass --force to replace it")
    if path.suffix == ".slim":
        return slimify.save(model, path, overwrite=overwrite)
    recorded = slimify.state.get_state(model).record.data_config
    save_checkpoint(path, {"model": model.state_dict(),
                           "model_spec": {**spec, **({"data_config": recorded} if recorded else {})}})
    return path
