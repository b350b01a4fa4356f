"""Which packages a model source may import from, beyond timm/torchvision/slimify: only those the
user names (``slimify --trust-source mypkg …`` or ``SLIMIFY_TRUST_SOURCE=mypkg,other``), never
by default, so that a ``.slim`` file from elsewhere can never make slimify import code. A trusted
package is found the way ``python -m`` finds one: in the current directory first.

    >>> with trusted("mypkg"):
    ...     model = slimify.load("mine.slim")       # source 'mypkg.models:MyNet' is rebuilt
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Iterator
from types import ModuleType

from slimify.errors import SlimifyError

__all__ = ["TRUST_ENV", "trusted_packages", "trust", "trusted", "is_trusted", "trust_hint", "import_trusted"]

TRUST_ENV = "SLIMIFY_TRUST_SOURCE"  # comma-separated package names the user trusts as model sources
_TRUSTED: list[str] = []  # added in this process (the CLI's --trust-source)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _check(package: str) -> str:
    package = package.strip()
    if not _NAME.match(package):
        raise SlimifyError(f"--trust-source {package!r} is not a package name (e.g. mypkg or mypkg.models)")
    return package


def trusted_packages() -> tuple[str, ...]:
    """The user's trusted packages: ``SLIMIFY_TRUST_SOURCE`` and those added with :func:`trust`."""
    from_env = [_check(p) for p in os.environ.get(TRUST_ENV, "").split(",") if p.strip()]
    return tuple(dict.fromkeys([*from_env, *_TRUSTED]))


def trust(*packages: str) -> None:
    """Allow model sources from ``packages`` (and their sub-modules) for the rest of the process."""
    _TRUSTED.extend(_check(p) for p in packages if _check(p) not in _TRUSTED)


@contextlib.contextmanager
def trusted(*packages: str) -> Iterator[None]:
    """Allow model sources from ``packages`` while the block runs."""
    before = list(_TRUSTED)
    trust(*packages)
    try:
        yield
    finally:
        _TRUSTED[:] = before


def is_trusted(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in trusted_packages())


def trust_hint(module: str) -> str:
    """How to opt in to ``module``'s package, for error messages."""
    root = module.split(".")[0]
    return f"if you trust its code, allow it with 'slimify --trust-source {root} …' or {TRUST_ENV}={root}"


def import_trusted(module: str) -> ModuleType:
    """Import ``module`` of a trusted package as ``python -m`` would: the current directory comes
    first on the search path (the ``slimify`` script's own folder is no place for the user's code)."""
    if not is_trusted(module):
        raise SlimifyError(f"model source {module!r} is not trusted; {trust_hint(module)}")
    here = os.getcwd()
    added = here not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module)
    finally:
        if added:
            sys.path.remove(here)
