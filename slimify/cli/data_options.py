"""The data options of the ``slimify`` CLI's data commands (finetune, calibrate, eval, search,
reorder): what ``--data`` accepts, and the data config a model carries (``--crop-pct``, ``--mean``,
``--std``, ``--interpolation``, named as in timm's validate.py/train.py)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["DATA_HELP", "data_config_options", "data_config_of"]

F = Callable[..., Any]

# what every --data option accepts (slimify.resolve_data reads it)
DATA_HELP = ("'digits' (embedded), 'fashion-mnist' (Debian's dataset-fashion-mnist), a directory of the four IDX "
             "files (e.g. MNIST's), or an ImageFolder directory (or one with train/, val/, test/)")


def _parse_floats(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` or ``"0.5 0.5 0.5"`` → a tuple of floats, each finite."""
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value.replace(",", " ").split())
    except ValueError:
        raise click.BadParameter(f"expected numbers like 0.485,0.456,0.406, got {value!r}") from None
    _check_field(param.name if param and param.name else "mean", values)
    return values


def _parse_crop(ctx: click.Context | None, param: click.Parameter | None, value: float | None) -> float | None:
    if value is not None:
        _check_field("crop_pct", value)
    return value


def _check_field(name: str, value: Any) -> None:
    """Build a DataConfig with ``name`` set (which checks it): a bad value is a usage error."""
    from slimify import DataConfig, SlimifyError

    try:
        DataConfig(**{name: value})
    except SlimifyError as e:
        raise click.BadParameter(str(e)) from None


def data_config_options(f: F) -> F:
    """``--crop-pct``, ``--mean``, ``--std``, ``--interpolation`` (as in timm's validate.py/train.py)."""
    from slimify import INTERPOLATIONS  # no torch: --help stays fast

    default = "  [default: the model's recorded one (finetune records it), else its own (timm), else ImageNet's]"
    f = click.option("--interpolation", type=click.Choice(INTERPOLATIONS),
                     help="Image resize interpolation." + default)(f)
    f = click.option("--std", callback=_parse_floats, metavar="S[,S,S]",
                     help="Normalisation std, one value or one per channel, each > 0." + default)(f)
    f = click.option("--mean", callback=_parse_floats, metavar="M[,M,M]",
                     help="Normalisation mean, one value or one per channel." + default)(f)
    return click.option("--crop-pct", type=float, callback=_parse_crop, metavar="P",
                        help="Evaluation crop: resize to size / P, center-crop the size; in (0, 1] (1: no crop)."
                             + default)(f)


def data_config_of(net: Any, input_size: tuple[int, int, int] | None, crop_pct: float | None,
                   mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                   interpolation: str | None) -> Any:
    """The DataConfig the options give (None when none is), checked against the model's channels."""
    from slimify import given_data_config

    return given_data_config(net, input_size, crop_pct, mean, std, interpolation)
