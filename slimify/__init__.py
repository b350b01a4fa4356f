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

# public name → module that defines it (imported on first use, so `import slimify` stays light).
# The command line (slimify/cli/) uses these names only: what it can do, a Python user can.
_LAZY: dict[str, str] = {
    # convert, switch, inspect
    "convert": "slimify.pipeline",
    "report": "slimify.pipeline",
    "reordering": "slimify.pipeline",
    "set_width": "slimify.state",
    "width": "slimify.state",
    "get_width": "slimify.state",
    "switches": "slimify.state",
    "is_slimmable": "slimify.state",
    "ConversionReport": "slimify.analysis.report",
    "reorder": "slimify.ordering.permute",
    "configs": "slimify.rewrite.config_names",
    "configs_table": "slimify.rewrite.config_names",
    "add_config": "slimify.selection.config_proof",  # proves the configuration, then names it
    # models: built from names, stored, their example inputs
    "create_model": "slimify.store.pretrained",
    "save": "slimify.store.slimfile",
    "load": "slimify.store.slimfile",
    "example_input": "slimify.store.slimfile",
    "example_call": "slimify.store.slimfile",
    "example_shape": "slimify.store.slimfile",
    "record_random_init": "slimify.store.slimfile",
    "holds_random_init": "slimify.store.slimfile",
    "write_weights": "slimify.store.weights",
    "WEIGHT_SUFFIXES": "slimify.store.weights",
    "check_input_size": "slimify.store.input_size",
    "trust": "slimify.store.trust",
    "trusted": "slimify.store.trust",
    # deploy: export, measure, choose
    "export": "slimify.deploy.extract",
    "active_params": "slimify.deploy.extract",
    "write_width": "slimify.deploy.formats",
    "write_all_widths": "slimify.deploy.formats",
    "profile": "slimify.deploy.measure",
    "attach_accuracy": "slimify.deploy.accuracy",
    "record_evaluation": "slimify.deploy.accuracy",
    "pick": "slimify.selection.budget",
    "parse_amount": "slimify.selection.budget",
    "search": "slimify.selection.config_search",
    "parse_budget": "slimify.selection.search_result",
    # train: data, fine-tuning, calibration, evaluation
    "DataConfig": "slimify.preprocess",
    "INTERPOLATIONS": "slimify.preprocess",
    "recorded_data_config": "slimify.train.data_config",
    "record_data_config": "slimify.train.data_config",
    "describe_data_config": "slimify.train.data_config",
    "resolve_data": "slimify.train.resolve",
    "has_validation": "slimify.train.resolve",
    "save_model": "slimify.train.resolve",
    "model_for_data": "slimify.train.prepare",
    "is_model_name": "slimify.train.prepare",
    "check_one_input": "slimify.train.prepare",
    "check_classes": "slimify.train.prepare",
    "given_data_config": "slimify.train.prepare",
    "data_batches": "slimify.train.prepare",
    "default_workers": "slimify.train.prepare",
    "record_trained_data_config": "slimify.train.prepare",
    "load_recipe": "slimify.train.recipe",
    "augment_args": "slimify.train.augment",
    "process_group": "slimify.train.distributed",
    "resolve_device": "slimify.train.common",
    "finetune": "slimify.train",
    "calibrate_bn": "slimify.train",
    "evaluate": "slimify.train",
    "run_demo": "slimify.train.demo",
    # extension points (docs/extending.md): one Registry each
    "Registry": "slimify.registry",
    "SCORES": "slimify.ordering.registry",
    "FORMATS": "slimify.deploy.formats",
    "ALL_WIDTHS": "slimify.deploy.formats",
}

__all__ = ["SlimifyError", "SlimifyWarning", *_LAZY]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on demand
    from slimify.analysis.report import ConversionReport
    from slimify.deploy.accuracy import attach_accuracy, record_evaluation
    from slimify.deploy.extract import active_params, export
    from slimify.deploy.formats import ALL_WIDTHS, FORMATS, write_all_widths, write_width
    from slimify.deploy.measure import profile
    from slimify.ordering.permute import reorder
    from slimify.ordering.registry import SCORES
    from slimify.pipeline import convert, reordering, report
    from slimify.preprocess import INTERPOLATIONS, DataConfig
    from slimify.registry import Registry
    from slimify.rewrite.config_names import configs, configs_table
    from slimify.selection.budget import parse_amount, pick
    from slimify.selection.config_proof import add_config
    from slimify.selection.config_search import search
    from slimify.selection.search_result import parse_budget
    from slimify.state import get_width, is_slimmable, set_width, switches, width
    from slimify.store.input_size import check_input_size
    from slimify.store.pretrained import create_model
    from slimify.store.slimfile import (
        example_call,
        example_input,
        example_shape,
        holds_random_init,
        load,
        record_random_init,
        save,
    )
    from slimify.store.trust import trust, trusted
    from slimify.store.weights import WEIGHT_SUFFIXES, write_weights
    from slimify.train import calibrate_bn, evaluate, finetune
    from slimify.train.augment import augment_args
    from slimify.train.common import resolve_device
    from slimify.train.data_config import describe_data_config, record_data_config, recorded_data_config
    from slimify.train.demo import run_demo
    from slimify.train.distributed import process_group
    from slimify.train.prepare import (
        check_classes,
        check_one_input,
        data_batches,
        default_workers,
        given_data_config,
        is_model_name,
        model_for_data,
        record_trained_data_config,
    )
    from slimify.train.recipe import load_recipe
    from slimify.train.resolve import has_validation, resolve_data, save_model


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
