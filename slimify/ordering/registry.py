"""The importance scores ``reorder`` understands, one registry entry each (name, help, whether it
needs data). Imports no torch, so the CLI lists the choices at once; each score imports its
implementation (``ordering/scores.py``) when it runs. A new score is one decorated function here.

A score function takes ``(model, space, table, data, batches)`` and returns one number per
channel class (indexed by class label, ``GroupTable.class_of``); higher is more important.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimify.registry import Registry

if TYPE_CHECKING:
    import numpy as np
    import torch.nn as nn

    from slimify.analysis.groups import GroupTable
    from slimify.analysis.space import ChannelSpace

__all__ = ["SCORES", "class_scores"]

SCORES = Registry("reorder method")


@SCORES.register("l1", help="L1 norm of each output channel's weights")
def l1(model: nn.Module, space: ChannelSpace, table: GroupTable, data: Any, batches: int) -> np.ndarray:
    from slimify.ordering.scores import norm_scores
    return norm_scores(model, space, table, 1)


@SCORES.register("l2", help="L2 norm of each output channel's weights")
def l2(model: nn.Module, space: ChannelSpace, table: GroupTable, data: Any, batches: int) -> np.ndarray:
    from slimify.ordering.scores import norm_scores
    return norm_scores(model, space, table, 2)


@SCORES.register("bn", help="BatchNorm |gamma| (network slimming); L1 where a group has no BatchNorm")
def bn(model: nn.Module, space: ChannelSpace, table: GroupTable, data: Any, batches: int) -> np.ndarray:
    from slimify.ordering.scores import bn_scores
    return bn_scores(model, space, table)


@SCORES.register("taylor", help="Taylor |activation x gradient| summed over a few batches of data", needs_data=True)
def taylor(model: nn.Module, space: ChannelSpace, table: GroupTable, data: Any, batches: int) -> np.ndarray:
    from slimify.ordering.scores import taylor_scores
    return taylor_scores(model, space, table, data, batches)


def class_scores(model: nn.Module, space: ChannelSpace, table: GroupTable, method: str,
                 data: Any = None, batches: int = 8) -> np.ndarray:
    """Importance of every channel class (indexed by class label) by the score named ``method``."""
    return SCORES.get(method).fn(model, space, table, data, batches)
