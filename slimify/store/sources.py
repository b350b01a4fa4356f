"""Where models come from, as plain data: a ``.slim`` file names a source that this module
rebuilds, and only timm, torchvision and slimify's own example models may be named, so a file
can never make slimify import or run arbitrary code.

    >>> model = create("resnet10t", num_classes=10)              # timm, random init
    >>> model = create("torchvision:resnet18", checkpoint="rn18.pth")
    >>> model = create("slimify:tinynet")                         # a small example CNN
    >>> source_of(model)
    ModelSource(spec='slimify:tinynet', kwargs={})
"""
from __future__ import annotations

import importlib
import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from slimify.errors import SlimifyError
from slimify.store.trust import import_trusted, is_trusted, trust_hint

__all__ = ["ModelSource", "TinyNet", "create", "build", "source_of", "set_source", "load_weights",
           "read_state_dict", "check_state_dict", "ALLOWED_MODULES", "EXAMPLES", "SOURCE_ATTR",
           "state_signature"]

SOURCE_ATTR = "_slimify_source"  # attribute on a model: the ModelSource it was built from

# roots of the packages a ``module.path:factory`` spec may import from (the module or below it)
ALLOWED_MODULES: tuple[str, ...] = ("timm.models", "torchvision.models", "slimify.store.sources",
                                    "slimify.store.digits_net")
# where the slimify model classes lived before the package had a folder per stage: specs written then still load
MOVED_MODULES: dict[str, str] = {"slimify.models": "slimify.store.sources", "slimify.train.models": "slimify.store.digits_net"}
# keyword arguments never accepted from a spec: they download, or read files outside our control
REFUSED_KWARGS: frozenset[str] = frozenset({"pretrained", "weights", "weights_backbone", "checkpoint_path",
                                            "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "progress"})


class TinyNet(nn.Module):
    """A small residual CNN with a concatenation (21 k parameters), for examples and tests.

        >>> TinyNet()(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.side = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, 2, 1, groups=2 * width, bias=False),
                                  nn.BatchNorm2d(2 * width), nn.ReLU())
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.body(x))
        x = self.head(torch.cat([x, self.side(x)], dim=1))
        return self.fc(x.mean(dim=(2, 3)))


def _digitsnet(**kwargs: Any) -> nn.Module:
    from slimify.store.digits_net import DigitsNet

    return DigitsNet(**kwargs)


# ``slimify:NAME`` → factory of one of slimify's own example models
EXAMPLES: dict[str, Callable[..., nn.Module]] = {"tinynet": TinyNet, "digitsnet": _digitsnet}


@dataclass(frozen=True)
class ModelSource:
    """How to build a model: a spec (``resnet18``, ``torchvision:resnet18``, ``slimify:tinynet``
    or ``timm.models.resnet:resnet18``) and JSON-able keyword arguments."""

    spec: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, data: Any) -> ModelSource:
        if not isinstance(data, dict) or not isinstance(data.get("spec"), str) \
                or not isinstance(data.get("kwargs", {}), dict):
            raise SlimifyError(f"model source must be {{'spec': str, 'kwargs': dict}}, got {data!r}")
        return cls(data["spec"], dict(data.get("kwargs", {})))


def _check_kwargs(spec: str, kwargs: dict[str, Any]) -> None:
    refused = sorted(REFUSED_KWARGS & set(kwargs))
    if refused:
        raise SlimifyError(f"{spec}: keyword {refused[0]!r} is not accepted (slimify never downloads or reads "
                           "weights through the model factory); pass checkpoint=FILE instead")
    try:
        json.dumps(kwargs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise SlimifyError(f"{spec}: model keyword arguments must be plain JSON data (numbers, strings, lists): "
                           f"{e}") from None


def _factory(spec: str) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    """The callable a spec names (and fixed keyword arguments), refusing non-allowed imports."""
    prefix, sep, name = spec.rpartition(":")
    if not name or (sep and not prefix):
        raise SlimifyError(f"model {spec!r} is empty: use a timm name, 'torchvision:NAME' or 'slimify:NAME'")
    if prefix in ("", "timm"):
        import timm

        return (lambda **kw: timm.create_model(name, **kw)), {"pretrained": False}
    if prefix == "torchvision":
        import torchvision

        return (lambda **kw: torchvision.models.get_model(name, **kw)), {"weights": None}
    if prefix == "slimify":
        if name.lower() not in EXAMPLES:
            raise SlimifyError(f"unknown slimify example model {name!r}; known: {sorted(EXAMPLES)}")
        return EXAMPLES[name.lower()], {}
    prefix = MOVED_MODULES.get(prefix, prefix)
    allowed = any(prefix == root or prefix.startswith(root + ".") for root in ALLOWED_MODULES)
    if not allowed and not is_trusted(prefix):
        raise SlimifyError(f"model source {prefix!r} is not allowed: only factories under {list(ALLOWED_MODULES)} "
                           f"can be named (a model file must never import arbitrary code); {trust_hint(prefix)}")
    try:
        module = importlib.import_module(prefix) if allowed else import_trusted(prefix)
    except ImportError as e:
        raise SlimifyError(f"cannot import model source {prefix!r}: {e}") from None
    obj = getattr(module, name, None)
    if name.startswith("_") or any(part.startswith("_") for part in prefix.split(".")) or not _is_factory(obj, name):
        raise SlimifyError(f"{spec!r} is not a model factory of {prefix} (a model class, or a function "
                           "registered as a model by timm or torchvision)")
    return obj, {}


def _is_factory(obj: Any, name: str) -> bool:
    """A model class defined in an allowed package, or a registered timm/torchvision model function."""
    if isinstance(obj, type):
        return issubclass(obj, nn.Module) and (any(obj.__module__ == r or obj.__module__.startswith(r + ".")
                                                    for r in ALLOWED_MODULES) or is_trusted(obj.__module__))
    if callable(obj) and is_trusted(getattr(obj, "__module__", None) or ""):  # the user's own factory function
        return True
    import timm
    import torchvision

    if timm.is_model(name) and timm.models.model_entrypoint(name) is obj:
        return True
    return name in torchvision.models.list_models() and torchvision.models.get_model_builder(name) is obj


def build(source: ModelSource | str, **kwargs: Any) -> nn.Module:
    """A freshly initialised plain model from ``source`` (nothing downloaded, nothing loaded)."""
    source = ModelSource(source, kwargs) if isinstance(source, str) else source
    _check_kwargs(source.spec, source.kwargs)
    factory, fixed = _factory(source.spec)
    try:
        model = factory(**fixed, **source.kwargs)
    except (RuntimeError, ValueError, KeyError, TypeError, AssertionError) as e:
        from slimify.store.suggest import closest_models

        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        close = closest_models(source.spec) if "nknown model" in first else []
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        args = f" with {source.kwargs}" if source.kwargs else ""
        raise SlimifyError(f"cannot build model {source.spec!r}{args}: {first}{hint}") from None
    if not isinstance(model, nn.Module):
        raise SlimifyError(f"{source.spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    set_source(model, source.spec, **source.kwargs)
    return model


def create(spec: str, checkpoint: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build the model ``spec`` names (timm by default, ``torchvision:NAME``, ``slimify:NAME`` or an
    allowed ``module.path:factory``) with random weights, then load ``checkpoint`` (a state dict
    in ``.safetensors`` or a torch file, read with ``weights_only=True``) if given."""
    if not isinstance(spec, str):
        raise SlimifyError(f"model spec must be a string such as 'resnet18', got {type(spec).__name__}")
    model = build(ModelSource(spec, kwargs))
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model


def set_source(model: nn.Module, spec: str, **kwargs: Any) -> None:
    """Record how ``model`` was built, so :func:`slimify.save` can write it into a ``.slim`` file."""
    _check_kwargs(spec, kwargs)
    model.__dict__[SOURCE_ATTR] = ModelSource(spec, dict(kwargs))


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state dict from ``.safetensors`` or a torch file (``weights_only=True``: never
    unpickles code); a training checkpoint's ``model``/``state_dict`` entry and a DDP
    ``module.`` prefix are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise SlimifyError(f"checkpoint {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch's pickle-protocol notes would break the one-line error
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SlimifyError(f"{path}: cannot read weights safely: damaged, or holds objects other than tensors "
                           "and plain data (never unpickled)") from None
    except Exception as e:  # safetensors, pickle and zip errors have no common base
        raise SlimifyError(f"{path}: cannot read weights safely ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SlimifyError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_state_dict(expected: dict[str, Any], got: dict[str, torch.Tensor], what: str) -> None:
    """Raise naming a few missing, unexpected and wrongly shaped keys if ``got`` ≠ ``expected``."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k} {tuple(got[k].shape)} ≠ {tuple(expected[k].shape)}" for k in expected
              if k in got and tuple(got[k].shape) != tuple(expected[k].shape)]
    problems = [f"{label} ({len(keys)}): {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if keys]
    if problems:
        raise SlimifyError(f"{what} does not match the model: {'; '.join(problems)}")


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a plain state dict into ``model`` (a converted model accepts the original's keys)."""
    state = read_state_dict(path)
    expected = {k: v for k, v in model.state_dict().items() if ".slim_bn." not in k}
    check_state_dict(expected, state, f"checkpoint {Path(path).name}")
    model.load_state_dict(state, strict=False)  # the private BN keys are derived by the core's hook
    return model


def state_signature(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """State-dict key → shape, per-switch BatchNorm state left out: what identifies a model's build."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if ".slim_bn." not in k}


def _candidates(model: nn.Module) -> list[str]:
    """Specs that may have built ``model``, judged from its class (no source was recorded)."""
    cls = getattr(type(model), "__slimify_base__", type(model))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cls.__module__.startswith("timm.") and cfg.get("architecture"):
        return [str(cfg["architecture"])]
    if cls.__module__.startswith("torchvision.models"):
        import torchvision

        return [f"torchvision:{n}" for n in torchvision.models.list_models()
                if torchvision.models.get_model_builder(n).__module__ == cls.__module__]
    examples = [f"slimify:{n}" for n, f in EXAMPLES.items() if f is cls or cls.__name__.lower() == n]
    own = [] if examples or "<" in cls.__qualname__ else [f"{cls.__module__}:{cls.__qualname__}"]  # a user's class
    return examples + own


def source_of(model: nn.Module) -> ModelSource:
    """How to rebuild ``model``: the recorded source, else one inferred from its class and
    verified against its parameter names and shapes (timm, torchvision and slimify models)."""
    recorded = model.__dict__.get(SOURCE_ATTR)
    if isinstance(recorded, ModelSource):
        return recorded
    wanted = state_signature(model)
    for spec in _candidates(model):
        tries: list[dict[str, Any]] = [{}]
        with torch.device("meta"):
            try:
                default = state_signature(build(spec))
            except SlimifyError:
                continue
            heads = {wanted[k][0] for k, s in default.items() if k in wanted and s and wanted[k] != s
                     and s[0] in (10, 1000)}
            tries += [{"num_classes": n} for n in sorted(heads)]
            for kwargs in tries:
                if state_signature(build(spec, **kwargs)) == wanted:
                    return ModelSource(spec, kwargs)
    raise SlimifyError(f"cannot tell how to rebuild {type(model).__name__}: build it with "
                       "slimify.store.sources.create(SPEC, ...) or record it with slimify.store.sources.set_source(model, SPEC)")
