"""Training recipes as validated dataclasses, so a typo in a YAML file fails loudly, not silently.

A recipe is plain data: ``load_recipe("demo")`` reads ``slimify/recipes/demo.yaml``;
``load_recipe("my.yaml", epochs=3)`` reads a file and overrides fields. Unknown keys, wrong
types and out-of-range values raise :class:`~slimify.SlimifyError` naming the key.

    >>> load_recipe("demo").narrow_loss
    'distill'
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from slimify.errors import SlimifyError

__all__ = ["Recipe", "load_recipe", "recipe_names", "RECIPE_DIR"]

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"  # shipped YAML recipes


@dataclass(frozen=True)
class Recipe:
    """Everything that decides how :func:`slimify.finetune` trains; every field has a default."""

    epochs: int = 1  # passes over the training data
    batch_size: int = 64  # images per process per step (total batch = batch_size x processes)
    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float | None = None  # peak learning rate (after warm-up); None: lr_base x global batch / lr_base_size
    momentum: float = 0.9  # SGD momentum; AdamW beta1
    nesterov: bool = False  # Nesterov momentum (SGD only)
    weight_decay: float = 1e-4  # L2 / decoupled decay, applied to weights with ndim > 1 only
    schedule: str = "cosine"  # "cosine", "step", "exponential" or "constant"
    milestones: list[int] = field(default_factory=list)  # "step": epochs where lr *= gamma
    gamma: float = 0.1  # "step": factor at each milestone; "exponential": factor per epoch
    min_lr: float = 0.0  # "cosine": final learning rate
    warmup_epochs: float = 0.0  # linear warm-up length in epochs (fractions allowed)
    warmup_factor: float = 0.1  # warm-up starts at warmup_factor x lr
    label_smoothing: float = 0.0  # cross-entropy label smoothing for label losses
    narrow_loss: str = "labels"  # narrower switches learn from "labels" or "distill" (widest's soft targets)
    distill_temperature: float = 1.0  # softmax temperature of in-place distillation
    sandwich: int | None = None  # None: all switches per step; n: widest + narrowest + n random (US-Nets)
    width_range: list[float] | None = None  # [min, max]: sandwich over continuous widths (n = sandwich or 2)
    configs: list[str] = field(default_factory=list)  # named width configurations trained every step too
    grad_clip: float | None = None  # clip the global gradient norm to this value (None = off)
    amp: bool = True  # mixed precision; only ever used on CUDA
    calibrate_batches: int = 0  # after training, re-estimate each switch's BN stats on this many batches
    eval_every: int = 1  # epochs between validation passes (when validation data is given)
    checkpoint_every: int = 0  # steps between checkpoints (0 = only at epoch ends)
    log_every: int = 10  # steps between JSONL log lines
    workers: int | None = None  # DataLoader workers per process; None: up to 8; always capped at the CPUs there are
    seed: int = 0  # seeds data order, augmentation, sandwich widths and torch/numpy/python RNGs
    notes: str = ""  # free text: where the settings come from
    # timm's training toolbox, keys named as in timm's train.py; None defers to the older key named
    opt: str | None = None  # timm optimizer (create_optimizer_v2): sgd (Nesterov), momentum, adamw …; None: optimizer
    opt_eps: float | None = None  # optimizer epsilon (None: the optimizer's default)
    opt_betas: list[float] | None = None  # Adam-family betas (None: (momentum, 0.999) for the older adamw)
    layer_decay: float | None = None  # layer-wise lr decay (timm models, via their group_matcher)
    sched: str | None = None  # timm scheduler, stepped per update: cosine, tanh, step, multistep, poly; None: schedule
    warmup_lr: float | None = None  # lr at the start of warm-up (None: warmup_factor x lr)
    decay_epochs: float = 30.0  # sched step: epochs between decays
    decay_milestones: list[int] | None = None  # sched multistep: decay epochs (None: milestones)
    decay_rate: float | None = None  # sched step/multistep: factor per decay (None: gamma)
    lr_base: float = 0.1  # lr for a global batch of lr_base_size, used when lr is None (timm's rule)
    lr_base_size: int = 256  # global batch that lr_base is meant for
    lr_base_scale: str = ""  # "linear", "sqrt", or "" = sqrt for Adam/LAMB-like optimizers, linear else
    smoothing: float | None = None  # label smoothing (None: label_smoothing)
    mixup: float = 0.0  # Mixup alpha (0: off)
    cutmix: float = 0.0  # CutMix alpha (0: off)
    mixup_prob: float = 1.0  # probability of mixing a batch when mixup or cutmix is on
    mixup_switch_prob: float = 0.5  # probability of CutMix instead of Mixup when both are on
    mixup_mode: str = "batch"  # "batch", "pair" or "elem" (timm's Mixup)
    auto_augment: str | None = None  # e.g. "rand-m9-mstd0.5-inc1" (RandAugment) for image folders slimify builds
    reprob: float = 0.0  # random erasing probability (image folders slimify builds)
    remode: str = "pixel"  # random erasing mode: "pixel", "rand" or "const"
    color_jitter: float | None = None  # colour jitter strength when auto_augment is off (None: timm's 0.4)
    scale: list[float] | None = None  # random-resized-crop area range (None: timm's [0.08, 1.0])
    ratio: list[float] | None = None  # random-resized-crop aspect range (None: timm's [3/4, 4/3])
    hflip: float = 0.5  # horizontal flip probability (timm's default)
    vflip: float = 0.0  # vertical flip probability
    no_aug: bool = False  # no training augmentation: resize and center-crop only (in-memory sets: no shifts)
    drop_path: float | None = None  # stochastic depth rate of the deepest block (timm models with DropPath)
    ema_decay: float | None = None  # timm ModelEmaV3 decay (e.g. 0.9998), evaluated beside the raw weights
    accum_steps: int = 1  # batches whose gradients add up before each optimizer step
    amp_dtype: str | None = None  # "float16" (GradScaler), "bfloat16" (also on CPU), "float32"; None: amp
    channels_last: bool = False  # NHWC memory format for model and images
    compile: bool | str = False  # torch.compile the model: true (inductor) or a backend name
    sync_bn: bool = False  # several processes: every switch's BatchNorm statistics over the global batch
    tensorboard: bool = False  # also write TensorBoard scalars to RUN/tensorboard (needs the tensorboard package)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _hints()[f.name])
        _check_values(self)

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (validated like a loaded file)."""
        _check_keys(changes, "recipe override")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        if not isinstance(data, dict):
            raise SlimifyError(f"{source}: a recipe must be a mapping of field: value, got {type(data).__name__}")
        _check_keys(data, source)
        try:
            return cls(**data)
        except SlimifyError as e:
            raise SlimifyError(f"{source}: {e}") from None


# allowed values of the string fields that pick an algorithm
CHOICES: dict[str, tuple[str | None, ...]] = {
    "optimizer": ("sgd", "adamw"),
    "schedule": ("cosine", "step", "exponential", "constant"),
    "narrow_loss": ("labels", "distill"),
    "sched": (None, "cosine", "tanh", "step", "multistep", "poly"),
    "lr_base_scale": ("", "linear", "sqrt"),
    "mixup_mode": ("batch", "pair", "elem"),
    "remode": ("pixel", "rand", "const"),
    "amp_dtype": (None, "float16", "bfloat16", "float32"),
}


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(Recipe)


def _check_keys(data: dict[str, Any], source: str) -> None:
    allowed = [f.name for f in dataclasses.fields(Recipe)]
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SlimifyError(f"{source}: unknown key {key!r}{hint}; allowed keys: {', '.join(allowed)}")


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_type(name: str, value: Any, hint: Any) -> None:
    if not _matches(value, hint):
        raise SlimifyError(f"key {name!r} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def _check_values(r: Recipe) -> None:
    for name, allowed in CHOICES.items():
        if getattr(r, name) not in allowed:
            shown = ", ".join("null" if a is None else (a or "''") for a in allowed)
            raise SlimifyError(f"key {name!r} must be one of {shown}; got {getattr(r, name)!r}")
    positive = {"epochs": r.epochs, "batch_size": r.batch_size, "lr": r.lr, "log_every": r.log_every,
                "distill_temperature": r.distill_temperature, "lr_base": r.lr_base, "lr_base_size": r.lr_base_size,
                "accum_steps": r.accum_steps, "decay_epochs": r.decay_epochs, "opt_eps": r.opt_eps}
    positive = {k: v for k, v in positive.items() if v is not None}
    for name, value in positive.items():
        if value <= 0:
            raise SlimifyError(f"key {name!r} must be > 0, got {value!r}")
    non_negative = {"weight_decay": r.weight_decay, "min_lr": r.min_lr, "warmup_epochs": r.warmup_epochs,
                    "calibrate_batches": r.calibrate_batches, "checkpoint_every": r.checkpoint_every,
                    "workers": r.workers or 0, "eval_every": r.eval_every, "momentum": r.momentum}
    for name, value in non_negative.items():
        if value < 0:
            raise SlimifyError(f"key {name!r} must be >= 0, got {value!r}")
    if not 0.0 <= r.label_smoothing < 1.0:
        raise SlimifyError(f"key 'label_smoothing' must be in [0, 1), got {r.label_smoothing!r}")
    if r.sandwich is not None and r.sandwich < 0:
        raise SlimifyError(f"key 'sandwich' must be null or >= 0, got {r.sandwich!r}")
    if r.width_range is not None and not (len(r.width_range) == 2 and 0 < r.width_range[0] < r.width_range[1] <= 1):
        raise SlimifyError(f"key 'width_range' must be [min, max] with 0 < min < max <= 1, got {r.width_range!r}")
    if r.grad_clip is not None and r.grad_clip <= 0:
        raise SlimifyError(f"key 'grad_clip' must be null or > 0, got {r.grad_clip!r}")
    if r.schedule == "step" and sorted(r.milestones) != r.milestones:
        raise SlimifyError(f"key 'milestones' must be increasing, got {r.milestones!r}")
    _check_toolbox(r)


def _check_toolbox(r: Recipe) -> None:
    """Ranges of the timm-named keys; an optimizer name timm does not know is an error here, not mid-run."""
    unit = {"mixup_prob": r.mixup_prob, "mixup_switch_prob": r.mixup_switch_prob, "reprob": r.reprob,
            "smoothing": r.smoothing, "drop_path": r.drop_path, "layer_decay": r.layer_decay,
            "ema_decay": r.ema_decay, "decay_rate": r.decay_rate, "hflip": r.hflip, "vflip": r.vflip}
    for name, value in unit.items():
        if value is not None and not 0.0 <= value <= 1.0:
            raise SlimifyError(f"key {name!r} must be in [0, 1], got {value!r}")
    for name, value in {"mixup": r.mixup, "cutmix": r.cutmix, "warmup_lr": r.warmup_lr,
                        "color_jitter": r.color_jitter}.items():
        if value is not None and value < 0:
            raise SlimifyError(f"key {name!r} must be >= 0, got {value!r}")
    if (r.mixup > 0 or r.cutmix > 0) and r.batch_size % 2:
        raise SlimifyError(f"key 'batch_size' must be even with mixup/cutmix (timm mixes pairs), got {r.batch_size}")
    if r.scale is not None and not (len(r.scale) == 2 and 0 < r.scale[0] <= r.scale[1] <= 1):
        raise SlimifyError(f"key 'scale' must be [min, max] with 0 < min <= max <= 1, got {r.scale!r}")
    if r.ratio is not None and not (len(r.ratio) == 2 and 0 < r.ratio[0] <= r.ratio[1]):
        raise SlimifyError(f"key 'ratio' must be [min, max] with 0 < min <= max, got {r.ratio!r}")
    if r.opt_betas is not None and (len(r.opt_betas) != 2 or not all(0 <= b < 1 for b in r.opt_betas)):
        raise SlimifyError(f"key 'opt_betas' must be two numbers in [0, 1), got {r.opt_betas!r}")
    if r.opt is not None:
        from timm.optim import list_optimizers

        known = list_optimizers()
        if r.opt.lower() not in known:
            close = difflib.get_close_matches(r.opt.lower(), known, n=3)
            raise SlimifyError(f"key 'opt': timm has no optimizer {r.opt!r}"
                               f"{' (did you mean ' + ', '.join(map(repr, close)) + '?)' if close else ''}")
    if r.auto_augment is not None and r.auto_augment.split("-")[0] not in ("rand", "augmix", "original",
                                                                            "originalr", "v0", "v0r", "3a"):
        raise SlimifyError(f"key 'auto_augment' must be a timm policy such as 'rand-m9-mstd0.5-inc1', "
                           f"'augmix-m5-w4-d2', 'original' or '3a'; got {r.auto_augment!r}")
    if r.compile is not False and not (r.compile is True or (isinstance(r.compile, str) and r.compile)):
        raise SlimifyError(f"key 'compile' must be true, false or a torch.compile backend name; got {r.compile!r}")


def recipe_names() -> list[str]:
    """Names of the recipes shipped with slimify (``slimify/recipes/*.yaml``)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(recipe: str | Path | Recipe | dict[str, Any] | None = None, **overrides: Any) -> Recipe:
    """A :class:`Recipe` from a shipped name, a YAML path, a dict or a Recipe, plus overrides."""
    if recipe is None:
        result = Recipe()
    elif isinstance(recipe, Recipe):
        result = recipe
    elif isinstance(recipe, dict):
        result = Recipe.from_dict(recipe)
    else:
        path = Path(recipe)
        if not path.suffix and (RECIPE_DIR / f"{recipe}.yaml").is_file():
            path = RECIPE_DIR / f"{recipe}.yaml"
        if not path.is_file():
            raise SlimifyError(f"recipe {str(recipe)!r} is neither a file nor a shipped recipe "
                               f"({', '.join(recipe_names())})")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise SlimifyError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
        result = Recipe.from_dict(data, source=str(path))
    return result.replace(**overrides) if overrides else result
