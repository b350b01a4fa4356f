"""slimify: retrofit PyTorch image models into slimmable networks (Yu et al., ICLR 2019).

    >>> import slimify, torchvision
    >>> model = slimify.convert(torchvision.models.resnet18(), switches=(0.25, 0.5, 1.0))
    >>> with slimify.width(model, 0.5):
    ...     logits = model(torch.randn(1, 3, 224, 224))
"""
from __future__ import annotations

import importlib
from typing import Any

from slimify.convert import convert, report  # eager: the submodule's name would shadow the function
from slimify.configs import add_config, configs  # eager: the submodule's name would shadow the function
from slimify.reorder import reorder  # eager: the submodule's name would shadow the function
from slimify.errors import SlimifyError
from slimify.export import export  # eager: the submodule's name would shadow the function
from slimify.profile import profile  # eager: the submodule's name would shadow the function
from slimify.state import get_width, is_slimmable, set_width, switches, width

__version__ = "0.1.0"

# public name → module that defines it (imported on first use, so `import slimify` stays light)
_LAZY: dict[str, str] = {
    "ConversionReport": "slimify.summary",
    "finetune": "slimify.train",
    "calibrate_bn": "slimify.train",
    "evaluate": "slimify.train",
    "reorder": "slimify.reorder",
    "export": "slimify.export",
    "profile": "slimify.profile",
    "save": "slimify.io",
    "load": "slimify.io",
}

__all__ = ["convert", "report", "SlimifyError", "set_width", "width", "get_width", "switches", "is_slimmable",
           "configs", "add_config", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'slimify' has no attribute {name!r}")
