"""What every benchmark does with bad input (issue 25): an unknown model name, a peer package that
is not installed or no device prints one line saying so and exits with status 2, before anything
is built or measured."""
from __future__ import annotations

import importlib.util
import sys
from typing import NoReturn

__all__ = ["refuse", "check_models", "check_package"]


def refuse(tool: str, message: str) -> NoReturn:
    """One line on stderr, exit status 2."""
    print(f"{tool}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _unknown(spec: str) -> str | None:
    """Why ``spec`` (timm name, ``torchvision:NAME``, ``slimify:NAME``) names no model, else None."""
    from slimify.errors import SlimifyError
    from slimify.store.sources import _factory
    prefix, _, name = spec.rpartition(":")
    try:
        _factory(spec)
    except SlimifyError as e:
        return str(e).splitlines()[0]
    if prefix in ("", "timm"):
        import timm
        return None if timm.is_model(name) else f"unknown timm model {name!r}"
    if prefix == "torchvision":
        import torchvision
        return None if name in torchvision.models.list_models() else f"unknown torchvision model {name!r}"
    return None


def check_models(tool: str, specs: list[str]) -> None:
    """Refuse the first spec that names no model."""
    for spec in specs:
        why = _unknown(spec.strip())
        if why is not None:
            refuse(tool, f"{why} (give a timm name, torchvision:NAME or slimify:NAME)")


def check_package(tool: str, module: str, package: str) -> None:
    """Refuse when ``module`` cannot be imported (``package``: what to install)."""
    if importlib.util.find_spec(module) is None:
        refuse(tool, f"{package} is not installed (pip install -e '.[bench]')")
