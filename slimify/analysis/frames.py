"""Which stack frames are library code and which the model's: by the resolved location of the
installed packages (torch's, slimify's, the standard library's folders), never by a substring of
the path, so a user's file in a folder named ``slimify`` or ``torch`` is still the model's.

    >>> is_library(torch.nn.functional.__file__), is_library("/home/me/slimify/model.py")
    (True, False)
    >>> is_tracing(torch.fx.proxy.__file__), is_tracing(torch.nn.functional.__file__)
    (True, False)
"""
from __future__ import annotations

import functools
import site
import sysconfig
from pathlib import Path
from types import ModuleType

__all__ = ["is_library", "is_tracing"]


def _where(module: ModuleType, folder: bool = True) -> Path:
    """The resolved folder of a package (``folder``) or file of a module."""
    path = Path(module.__file__ or "").resolve()
    return path.parent if folder else path


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[tuple[Path, bool], ...]:
    """(folder, is library): the standard library is, the site-packages inside it are not (a
    model's own package lives there), torch and slimify inside them are."""
    import torch

    import slimify

    stdlib = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
    packages = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} | set(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.USER_SITE:
        packages.add(site.USER_SITE)
    roots = [(Path(p).resolve(), True) for p in stdlib] + [(Path(p).resolve(), False) for p in packages]
    return tuple(roots + [(_where(torch), True), (_where(slimify), True)])


@functools.lru_cache(maxsize=1)
def _tracing_roots() -> tuple[Path, ...]:
    """What runs between a model's line and the node fx makes of it: fx itself, the module call,
    torch's function and tensor dispatch, and slimify's tracers and channel rules."""
    import torch.fx
    import torch.nn.modules.module
    import torch.overrides
    import torch.utils._device

    import slimify

    files = (torch.nn.modules.module, torch.overrides, torch._tensor, torch._ops, torch.utils._device)
    own = _where(slimify)  # its own files by their place in the package: importing them here would be a cycle
    return (_where(torch.fx), own / "rules", own / "analysis" / "trace.py", own / "analysis" / "tracer.py",
            *(_where(m, folder=False) for m in files))


def _resolved(filename: str) -> Path | None:
    """The file a code object names, or None for generated code (``<string>``, fx's ``<eval_with_key>``)."""
    if not filename or filename.startswith("<"):
        return None
    try:
        return Path(filename).resolve()
    except (OSError, RuntimeError):
        return None


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@functools.lru_cache(maxsize=8192)
def is_library(filename: str) -> bool:
    """Whether ``filename`` is the standard library's, torch's or slimify's (the innermost
    installed folder holding it decides: a package in site-packages is not library code)."""
    path = _resolved(filename)
    if path is None:
        return False
    found = [(len(root.parts), library) for root, library in _library_roots() if _within(path, root)]
    return max(found)[1] if found else False


@functools.lru_cache(maxsize=8192)
def is_tracing(filename: str) -> bool:
    """Whether ``filename`` is part of the tracing machinery (fx, module calls, torch's dispatch,
    slimify's tracers and rules): frames to skip to find the model line that made a node."""
    path = _resolved(filename)
    return path is not None and any(_within(path, root) for root in _tracing_roots())
