"""A model and its data made ready for a data command (finetune, calibrate, eval, search,
reorder): the model a name, ``.slim`` file or checkpoint gives, checked against the data before
any work, the data config the options give, and the first batches of a data set. Each check
raises one :class:`SlimifyError` line; the CLI only parses and prints."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.preprocess import DataConfig, check_data_config
from slimify.store.slimfile import example_call, example_input, record_random_init
from slimify.train.data import recorded_input_size
from slimify.train.data_config import record_resolved
from slimify.train.loader import as_batches
from slimify.train.resolve import count_classes, default_input_size, in_memory, load_slimmable, resolve_data

__all__ = ["model_for_data", "is_model_name", "check_one_input", "check_classes", "given_data_config", "data_batches",
           "default_workers", "record_trained_data_config"]


def is_model_name(model: str) -> bool:
    """``model`` names a model to build (not a ``.slim`` file or a training checkpoint)."""
    return not (Path(model).suffix == ".slim" or Path(model).is_file())


def model_for_data(model: str, data: str, checkpoint: str | None = None, switches: tuple[float, ...] | None = None,
               divisor: int | None = None, num_classes: int | None = None, reorder: str | None = None,
               input_size: tuple[int, int, int] | None = None, pretrained: bool = False,
               pretrained_tag: str | None = None, model_kwargs: dict[str, Any] | None = None,
               seed: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The slimmable model and its spec for a data command on ``data``: a ``.slim`` file, a
    training checkpoint, or a name converted at ``data``'s image size with a head of its classes
    (``seed``: the same seed builds the same initial weights). A name built without weights is
    recorded as random."""
    if seed is not None:
        torch.manual_seed(seed)
    classes = num_classes or count_classes(data)
    net, spec = load_slimmable(model, checkpoint, switches, divisor, classes,
                               input_size=input_size or default_input_size(data), reorder=reorder,
                               pretrained=pretrained, pretrained_tag=pretrained_tag, model_kwargs=model_kwargs)
    if is_model_name(model) and not (checkpoint or pretrained):
        record_random_init(net, True)
    return net, spec


def check_one_input(net: nn.Module, command: str) -> None:
    """Fail before any work when ``net`` takes more than one image batch: a data command feeds it
    only the images of its data."""
    call = example_call(net)
    if not call.single:
        name = getattr(type(net), "__slimify_base__", type(net)).__name__
        raise SlimifyError(f"{name} takes several inputs ({call.shapes()}): {command} feeds it one image batch "
                           f"from DATA; run slimify.train's functions in Python with your own data loader")


def check_classes(net: nn.Module, data: str, command: str) -> None:
    """Fail before any work when the model takes other inputs than ``data``'s images, or ``data``
    has more classes than the model has outputs."""
    check_one_input(net, command)
    classes, was_training = count_classes(data), net.training
    with torch.no_grad():
        outputs = net.eval()(example_input(net)).shape[-1]
    net.train(was_training)
    if classes is not None and classes > outputs:
        raise SlimifyError(f"{data} has {classes} classes but the model has {outputs} outputs: use a model "
                           f"with {classes} outputs (convert it with --num-classes {classes})")


def given_data_config(net: nn.Module, input_size: tuple[int, ...] | None, crop_pct: float | None = None,
                      mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                      interpolation: str | None = None) -> DataConfig | None:
    """The DataConfig these values give (None when none is), checked against the model's channels."""
    if crop_pct is None and mean is None and std is None and interpolation is None:
        return None
    cfg = DataConfig(crop_pct=crop_pct, mean=mean, std=std, interpolation=interpolation)
    size = input_size or recorded_input_size(net)
    check_data_config(cfg, size[0] if size else None)
    return cfg


def data_batches(data: str, net: nn.Module, count: int, batch_size: int, input_size: tuple[int, int, int] | None = None,
                 data_config: DataConfig | None = None, shuffled: bool = False) -> list[Any]:
    """The first ``count`` batches of ``data``'s held-out split preprocessed for ``net``: in order,
    or ``shuffled`` in a fixed order (seed 0: the same batches every run)."""
    dataset = resolve_data(data, net, train=False, input_size=input_size, data_config=data_config)
    if not shuffled:
        return list(itertools.islice(as_batches(dataset, batch_size), count))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    out = []
    for batch in loader:
        if len(out) >= count:
            break
        out.append(batch)
    return out


def default_workers(workers: int | None, data: str) -> int | None:
    """None lets the loader use the CPUs there are; in-memory sets (digits, IDX) need no workers."""
    return 0 if workers is None and in_memory(data) else workers


def record_trained_data_config(net: nn.Module, dataset: Any, input_size: tuple[int, int, int] | None,
                               given: DataConfig | None) -> dict[str, Any] | None:
    """An image folder is preprocessed by the data config: record on ``net`` the whole config it
    trains with (later commands preprocess the same way) and return it; other data sets: None."""
    from torchvision.datasets import ImageFolder

    if not isinstance(dataset, ImageFolder):
        return None
    return record_resolved(net, input_size or recorded_input_size(net) or (3, 224, 224), given)
