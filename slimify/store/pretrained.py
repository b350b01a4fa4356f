"""Published pretrained weights, loaded the way users get them: through timm's and torchvision's own
loaders and caches (``HF_HUB_CACHE``/``HF_HUB_OFFLINE`` for timm's Hugging Face hub copies,
``TORCH_HOME`` for torchvision's, which offline mode also keeps from downloading), never a
downloader of ours. A copy that cannot be had is one
:class:`SlimifyError` naming what is missing and where it was looked for.

    >>> model = create_pretrained("resnet18", tag="a1_in1k", num_classes=10)  # timm, new 10-class head
    >>> model = create_pretrained("torchvision:resnet18")                    # DEFAULT weights
    >>> source_of(model).spec     # what a .slim file records: the architecture, never a download
    'torchvision:resnet18'
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.store.sources import build, create, set_source

__all__ = ["create_pretrained", "create_model", "split_spec"]


def split_spec(spec: str) -> tuple[str, str]:
    """``"torchvision:resnet18"`` → ("torchvision", "resnet18"); a bare name is timm's."""
    prefix, _, name = spec.rpartition(":")
    return (prefix or "timm"), name


def create_pretrained(spec: str, tag: str | None = None, **kwargs: Any) -> nn.Module:
    """The model ``spec`` names with its published weights (``tag`` picks one of several: a timm
    pretrained tag such as ``a1_in1k``, a torchvision weights name such as ``IMAGENET1K_V2``).

    With ``num_classes`` other than the weights' classes, every tensor but the classifier head is
    loaded and the head starts from random init (timm does this itself; for torchvision the
    matching tensors are copied into a model built with ``num_classes``)."""
    source, name = split_spec(spec)
    if source == "timm":
        return _timm(name, tag, kwargs)
    if source == "torchvision":
        return _torchvision(name, tag, kwargs)
    raise SlimifyError(f"{spec}: --pretrained loads published timm or torchvision weights; {spec!r} has none. "
                       "Pass your own weights with --checkpoint FILE")


def create_model(spec: str, checkpoint: str | Path | None = None, pretrained: bool = False, tag: str | None = None,
                 **kwargs: Any) -> nn.Module:
    """The plain model a name gives (timm, ``torchvision:NAME``, ``slimify:NAME`` or a trusted
    factory), in eval mode: with the published weights (``pretrained``, ``tag``), with plain
    weights from ``checkpoint``, else randomly initialised."""
    model = create_pretrained(spec, tag, **kwargs) if pretrained else create(spec, checkpoint=checkpoint, **kwargs)
    return model.eval()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0].split('. ')[0]}" if text else type(e).__name__


def _timm(name: str, tag: str | None, kwargs: dict[str, Any]) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    arch, _, own_tag = name.partition(".")
    if tag and own_tag and tag != own_tag:
        raise SlimifyError(f"{name} already names the tag {own_tag!r}; --pretrained-tag {tag!r} contradicts it")
    if not timm.is_model(arch):
        raise SlimifyError(f"unknown timm model {arch!r} (see timm.list_models())")
    published = timm.list_pretrained(f"{arch}.*")
    if not published:
        raise SlimifyError(f"timm publishes no pretrained weights for {arch!r}: pass your own with --checkpoint FILE")
    full = f"{arch}.{tag or own_tag}" if (tag or own_tag) else arch
    if (tag or own_tag) and full not in published:
        tags = ", ".join(p.split(".", 1)[1] for p in published)
        raise SlimifyError(f"timm has no pretrained tag {(tag or own_tag)!r} for {arch}; published tags: {tags}")
    with torch.device("meta"):
        build(full, **kwargs)  # arguments are checked before any weights are looked for (no memory used)
    try:
        model = timm.create_model(full, pretrained=True, **kwargs)
    except Exception as e:  # hub, network and file errors share no base class
        raise SlimifyError(_missing_timm(full, get_pretrained_cfg(full), e)) from None
    resolved = model.pretrained_cfg.get("tag")  # the default tag when none was asked for
    set_source(model, f"{arch}.{resolved}" if resolved else full, **kwargs)  # rebuilt with that data config
    return model


def _missing_timm(full: str, cfg: Any, e: BaseException) -> str:
    """The one-line error for timm weights that could not be loaded, naming the copy it needs."""
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        from huggingface_hub import constants

        repo = hub_id.split("@")[0]
        where = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        offline = " (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        return (f"cannot load timm's pretrained weights for {full}: no usable copy of the hub repo {repo} "
                f"(model.safetensors) in {where}{offline} [{_first_line(e)}]; download it once online "
                "(or point HF_HUB_CACHE at a cache that holds it)")
    url = getattr(cfg, "url", None) if cfg is not None else None
    return (f"cannot load timm's pretrained weights for {full} from {url or 'its pretrained config'} "
            f"[{_first_line(e)}]; download them once online or pass them with --checkpoint FILE")


def _torchvision(name: str, tag: str | None, kwargs: dict[str, Any]) -> nn.Module:
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(name)
    except (ValueError, KeyError):
        raise SlimifyError(f"unknown torchvision model {name!r} (see torchvision.models.list_models())") from None
    members = list(enum.__members__)
    if not members:
        raise SlimifyError(f"torchvision publishes no weights for {name!r}: pass your own with --checkpoint FILE")
    if tag is not None and tag not in enum.__members__:
        raise SlimifyError(f"torchvision has no weights {tag!r} for {name}; published: {', '.join(members)}")
    weights = enum[tag] if tag is not None else enum.DEFAULT
    model = build(f"torchvision:{name}", **kwargs)  # arguments checked first; this model gets the weights
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    fix = "download it once online (or set TORCH_HOME to a directory whose hub/checkpoints holds it)"
    if not file.is_file() and _offline():
        raise SlimifyError(f"cannot load torchvision's {name} weights {weights}: no cached copy at {file} and "
                           f"HF_HUB_OFFLINE is set, so {weights.url} is not fetched; {fix}")
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # urllib, hash and file errors share no base class
        raise SlimifyError(f"cannot load torchvision's {name} weights {weights}: no cached copy at {file} and "
                           f"{weights.url} could not be fetched [{_first_line(e)}]; {fix}") from None
    _load_matching(model, state, f"{name} {weights}")
    return model


def _offline() -> bool:
    """Hugging Face's offline switch, honoured for torchvision's downloads as well."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _load_matching(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``model``; tensors whose shape differs (a head with other classes) keep
    their random init, with a warning naming them. Anything else missing is an error."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise SlimifyError(f"{what} lacks {len(missing)} tensors of the model (first: {missing[0]}): "
                           "the model was built with arguments the weights do not fit")
    kept = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if kept:
        warnings.warn(f"{what}: {', '.join(kept)} do not fit the requested model (other classes?) and start "
                      "from random init", stacklevel=3)
    model.load_state_dict({k: v for k, v in state.items() if k in own and k not in kept}, strict=False)
