"""slimify: retrofit PyTorch image models into slimmable networks (Yu et al., ICLR 2019).

    >>> import slimify, torchvision
    >>> model = slimify.convert(torchvision.models.resnet18(), switches=(0.25, 0.5, 1.0))
    >>> with slimify.width(model, 0.5):
    ...     logits = model(torch.randn(1, 3, 224, 224))

Every public name is imported on first use (PEP 562), so ``import slimify`` and the CLI's
``--help`` load no torch.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any

from slimify.errors import SlimifyError, SlimifyWarning

__version__ = "0.1.0"

# public name → module that defines it (imported on first use, so `import slimify` stays light)
_LAZY: dict[str, str] = {
    "convert": "slimify.pipeline",
    "report": "slimify.pipeline",
    "set_width": "slimify.state",
    "width": "slimify.state",
    "get_width": "slimify.state",
    "switches": "slimify.state",
    "is_slimmable": "slimify.state",
    "ConversionReport": "slimify.analysis.report",
    "finetune": "slimify.train",
    "calibrate_bn": "slimify.train",
    "evaluate": "slimify.train",
    "reorder": "slimify.ordering.permute",
    "export": "slimify.deploy.extract",
    "profile": "slimify.deploy.measure",
    "save": "slimify.store.slimfile",
    "load": "slimify.store.slimfile",
    "configs": "slimify.rewrite.config_names",
    "add_config": "slimify.selection.config_proof",  # proves the configuration, then names it
    "pick": "slimify.selection.budget",
    "search": "slimify.selection.config_search",
}

__all__ = ["SlimifyError", "SlimifyWarning", *_LAZY]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on demand
    from slimify.analysis.report import ConversionReport
    from slimify.deploy.extract import export
    from slimify.deploy.measure import profile
    from slimify.ordering.permute import reorder
    from slimify.pipeline import convert, report
    from slimify.rewrite.config_names import configs
    from slimify.selection.budget import pick
    from slimify.selection.config_proof import add_config
    from slimify.selection.config_search import search
    from slimify.state import get_width, is_slimmable, set_width, switches, width
    from slimify.store.slimfile import load, save
    from slimify.train import calibrate_bn, evaluate, finetune


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    if name in {m.name for m in pkgutil.iter_modules(__path__)}:  # a submodule: ``slimify.state.get_state``
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'slimify' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
