"""Save and load slimmable models as data, never as pickled code: a ``.slim`` file is one
safetensors file whose metadata holds a JSON config (how to rebuild the model, how it was
converted, a digest of the plan) beside the full state dict.

    >>> slimify.save(model, "rn50.slim")           # atomic; refuses to overwrite unless asked
    >>> model = slimify.load("rn50.slim")          # rebuilt, re-converted, verified, loaded

Config (``__metadata__["slimify"]``)::

    {"format": "slimify", "version": 1, "source": {"spec": "resnet50", "kwargs": {}},
     "conversion": {"switches": [0.25, 0.5, 0.75, 1.0], "divisor": 8, "example_shape": [1, 3, 224, 224]},
     "plan_sha256": "…", "tensors_sha256": "…", "width": 1.0, "model": "ResNet", "slimify_version": "0.1.0"}
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from slimify.analysis.example_inputs import ExampleCall
from slimify.errors import SlimifyError
from slimify.preprocess import own_input_size
from slimify.state import get_state, is_slimmable
from slimify.store.atomic import atomic_path
from slimify.store.sources import ModelSource, build, check_state_dict

__all__ = ["save", "load", "read_config", "example_input", "example_call", "example_shape", "record_random_init",
           "holds_random_init",
           "plan_digest", "tensors_digest", "FORMAT", "VERSION"]

FORMAT = "slimify"
VERSION = 1  # bump when the config changes incompatibly; load refuses newer versions
META_KEY = "slimify"  # safetensors metadata key holding the JSON config
MAX_HEADER = 100 * 2**20  # a safetensors header larger than this is not one of ours


def example_shape(model: nn.Module) -> tuple[int, ...]:
    """The input shape ``model`` was converted with (recorded in its state), else its default (a
    plain model's own: timm's pretrained_cfg, else 224²)."""
    shape = get_state(model).record.example_shape if is_slimmable(model) else None
    if shape:
        return tuple(int(s) for s in shape)
    return (1, *own_input_size(model))


def example_input(model: nn.Module, batch: int = 1, size: tuple[int, ...] | None = None) -> torch.Tensor:
    """A fixed random batch at the shape ``model`` was converted with (a plain model: its own
    size), or at ``size`` (the shape without the batch) if given."""
    shape = (batch, *(size or example_shape(model)[1:]))
    return torch.randn(shape, generator=torch.Generator().manual_seed(0))


def record_random_init(model: nn.Module, random_init: bool) -> None:
    """Say whether ``model`` holds random weights (built from a name without weights, never
    trained); kept in its ``.slim``: ``finetune`` warns before distilling from them."""
    get_state(model).record.random_init = random_init


def holds_random_init(model: nn.Module) -> bool:
    """Whether ``model`` was recorded as holding random weights (:func:`record_random_init`)."""
    return get_state(model).record.random_init


def example_call(model: nn.Module, batch: int | None = None, shape: tuple[int, ...] | None = None) -> ExampleCall:
    """The call ``model`` was converted on, rebuilt with fixed random values: its recorded form
    (several or keyword inputs) or one tensor at the recorded shape; ``batch`` rows in every batched
    tensor, the first tensor at ``shape`` (its batch included) if given."""
    spec = get_state(model).record.example_inputs
    if spec is None:
        call = ExampleCall.of(example_input(model))
    else:
        from slimify.analysis.example_inputs import rebuild

        call = ExampleCall(*rebuild(spec, torch.Generator().manual_seed(0)))
    call = call.resized(shape) if shape is not None else call
    return call.batched(batch) if batch is not None else call


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, np.ndarray):
        h.update(f"a{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj, dtype=np.int64).tobytes())
    elif isinstance(obj, slice):
        h.update(f"s{obj.start},{obj.stop},{obj.step};".encode())
    elif isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            _feed(h, key)
            _feed(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for value in obj:
            _feed(h, value)
        h.update(b"]")
    elif isinstance(obj, (bool, np.bool_)):
        h.update(b"T;" if obj else b"F;")
    elif isinstance(obj, (int, np.integer)):
        h.update(f"i{int(obj)};".encode())
    elif isinstance(obj, (float, np.floating)):
        h.update(f"f{float(obj)!r};".encode())
    else:
        h.update(f"r{obj!r};".encode())


def plan_digest(model: nn.Module) -> str:
    """SHA-256 of the conversion plan (widths, every tensor's cut, attributes, BatchNorms per
    switch): equal digests mean a rebuilt model slims exactly like the saved one."""
    analysis = get_state(model).record.analysis
    if analysis is None:
        raise SlimifyError(f"{type(model).__name__} has no conversion plan: convert it with slimify.convert")
    plan = analysis.plan
    h = hashlib.sha256()
    _feed(h, [plan.switches, plan.divisor, plan.kept, plan.params, plan.attrs, plan.batchnorms, plan.output_widths])
    return h.hexdigest()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (catches corrupted data)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise SlimifyError(f"state dict entry {name!r} is {type(value).__name__}, not a tensor: cannot save it")
        t = value.detach().cpu().contiguous()
        if t.numel() and t.data_ptr() in seen:  # safetensors refuses shared storage
            t = t.clone()
        seen.add(t.data_ptr())
        out[name] = t
    return out


def save(model: nn.Module, path: str | Path, overwrite: bool = False,
         source: ModelSource | str | None = None) -> Path:
    """Write the converted ``model`` to ``path`` (``.slim``) atomically. ``source`` says how to
    rebuild it (default: what :func:`slimify.store.sources.create` recorded, or inferred)."""
    from safetensors.torch import save_file

    from slimify import __version__

    state = get_state(model)
    from slimify.store.user_models import source_for_save

    src = source_for_save(model, ModelSource(source) if isinstance(source, str) else source, path)
    tensors = _state_tensors(model)
    config = {"format": FORMAT, "version": VERSION, "slimify_version": __version__, "source": src.to_dict(),
              "conversion": {"switches": list(state.switches), "divisor": _divisor(state.record.divisor),
                             "example_shape": list(example_shape(model)),
                             "group_divisors": [g.divisor for g in state.record.report.groups],
                             **({"example_inputs": state.record.example_inputs}
                                if state.record.example_inputs is not None else {})},  # several inputs, keywords
              "plan_sha256": plan_digest(model), "tensors_sha256": tensors_digest(tensors),
              "width": state.width if state.index < len(state.switches) else state.switches[-1],
              "model": type(model).__name__}
    if state.record.evaluation:  # accuracy per width from finetune (slimify.deploy.accuracy)
        config["evaluation"] = state.record.evaluation
    if state.record.data_config:  # the preprocessing it was trained with (slimify.train.data_config)
        config["data_config"] = state.record.data_config
    if state.record.random_init:  # never trained (ConversionRecord.random_init)
        config["random_init"] = True
    from slimify.rewrite.config_names import configs_to_json

    if (named := configs_to_json(model)):
        config["configs"] = named  # named width configurations, their calibrated BN in the tensors
    with atomic_path(path, overwrite) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(config)})
    return Path(path)


def _divisor(divisor: int | None) -> int | None:
    """``None``: the automatic divisor (a file without ``group_divisors`` always has an int)."""
    return None if divisor is None else int(divisor)


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The safetensors header and our config, checking sizes before any tensor is read."""
    if not path.is_file():
        raise SlimifyError(f"model file {str(path)!r} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise SlimifyError(f"{path} is empty (0 bytes): not a .slim file")
    from slimify.store.suggest import foreign_file

    foreign = foreign_file(path)
    if foreign is not None:
        raise SlimifyError(foreign)
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > MAX_HEADER or 8 + n > size:
            raise SlimifyError(f"{path} is truncated or not a .slim file (bad header length)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
        meta = header.get("__metadata__") or {}
    except (ValueError, AttributeError):
        raise SlimifyError(f"{path} is corrupt or not a .slim file (unreadable header)") from None
    if META_KEY not in meta:
        raise SlimifyError(f"{path} is a safetensors file without slimify metadata: plain weights load with "
                           "--checkpoint / slimify.store.sources.create(spec, checkpoint=...)")
    try:
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
        config = json.loads(meta[META_KEY])
    except (ValueError, TypeError, KeyError, IndexError):
        raise SlimifyError(f"{path} is corrupt (bad tensor table or config)") from None
    if 8 + n + max(ends, default=0) != size:
        raise SlimifyError(f"{path} is truncated or corrupt: {size} bytes, the header promises "
                           f"{8 + n + max(ends, default=0)}")
    return header, config


def read_config(path: str | Path) -> dict[str, Any]:
    """The checked config of a ``.slim`` file (no model is built)."""
    path = Path(path)
    config = _read_header(path)[1]
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise SlimifyError(f"{path} is not a slimify model file (format {config.get('format')!r})"
                           if isinstance(config, dict) else f"{path}: config is not a JSON object")
    version = config.get("version")
    if not isinstance(version, int) or version < 1:
        raise SlimifyError(f"{path}: invalid format version {version!r}")
    if version > VERSION:
        raise SlimifyError(f"{path} uses format version {version}, newer than this slimify reads ({VERSION}): "
                           "upgrade slimify")
    conv = config.get("conversion")
    try:
        switches = [float(s) for s in conv["switches"]]
        divisor, shape = conv["divisor"], [int(s) for s in conv["example_shape"]]
        ok = (divisor is None or isinstance(divisor, int)) and 2 <= len(shape) <= 5 and all(0 < s <= 4096 for s in shape)
        ok = ok and float(config.get("width", 1.0)) in switches and isinstance(config.get("plan_sha256"), str)
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise SlimifyError(f"{path}: the conversion settings in its config are invalid")
    return config


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the model a ``.slim`` file describes (or take ``model``, a fresh instance you built,
    checked against the file), convert it with the saved settings, verify the plan and every
    tensor's name, shape and bytes, load the weights and return it in eval mode at the saved width.
    Nothing is unpickled and only allowed model sources are imported."""
    from safetensors.torch import load_file

    import slimify
    from slimify.store.user_models import adopt

    path = Path(path)
    config = read_config(path)
    given = model is not None
    model = build(ModelSource.from_dict(config["source"])) if not given else \
        adopt(model, config, _read_header(path)[0], path)
    conv = config["conversion"]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(conv["example_shape"], generator=generator)
    if "example_inputs" in conv:  # several inputs or keyword inputs, of the recorded form
        from slimify.analysis.example_inputs import rebuild
        args, kwargs = rebuild(conv["example_inputs"], generator)
        slimify.convert(model, switches=tuple(conv["switches"]), divisor=conv["divisor"],
                        example_input=args[0] if len(args) == 1 else args, example_kwargs=kwargs or None)
    else:
        slimify.convert(model, switches=tuple(conv["switches"]), divisor=conv["divisor"], example_input=x)
    state = get_state(model)
    state.record.example_shape = list(x.shape)
    if isinstance(config.get("evaluation"), dict):
        state.record.evaluation = config["evaluation"]
    if isinstance(config.get("data_config"), dict):
        state.record.data_config = config["data_config"]
    state.record.random_init = config.get("random_init") is True
    if plan_digest(model) != config["plan_sha256"]:
        raise SlimifyError(f"{path}: the {'model passed to load' if given else 'rebuilt model'} slims differently "
                           "from the saved one (plan digest mismatch; saved with another slimify/timm/torchvision "
                           "version?)")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise SlimifyError(f"{path} is corrupt: {str(e).splitlines()[0]}") from None
    if "configs" in config:  # registered first: calibrated configurations own BatchNorm buffers
        from slimify.rewrite.config_names import configs_from_json

        configs_from_json(model, config["configs"], str(path))
    check_state_dict(model.state_dict(), tensors, f"{path.name}'s tensors")
    if tensors_digest(tensors) != config.get("tensors_sha256"):
        raise SlimifyError(f"{path} is corrupt: its tensor data does not match the recorded checksum")
    model.load_state_dict(tensors, strict=True)
    state.select(float(config.get("width", state.switches[-1])))
    return model.eval()
