"""The path of a width (docs/design.md, *The path of a width*): analysis counts the channels of
every width, rewrite applies the cuts it is given. ``slimify.width(model, 0.6)`` reaches the
narrow weight a conv serves through five files, and no rewrite module rounds or balances counts."""
from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import torch
import torch.nn as nn

import slimify
from slimify.rewrite.config_slots import channels_of

pytestmark = pytest.mark.usefixtures("one_thread")

PACKAGE = Path(slimify.__file__).resolve().parent
PATH_OF_A_WIDTH = ["state.py", "rewrite/config_slots.py", "analysis/plan.py", "rewrite/serve.py", "rewrite/slicing.py"]
# a record's one-line property, read like its fields (``ChannelGroup.size``: classes × unit)
RECORD_PROPERTIES = {("analysis/groups.py", "size")}
# what counting a width needs, all in analysis/plan.py (and what it calls)
COUNTING = {"kept_classes", "uniform_counts", "unit_step", "make_divisible", "group_divisor", "common_counts",
            "active_ids", "unbalanced_pieces", "fill_cuts", "output_counts", "unique"}


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def _files_called(run: Any) -> list[str]:
    """The package's files whose functions ``run`` calls, in the order first called."""
    seen: list[str] = []

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            path = Path(frame.f_code.co_filename)
            if path.is_relative_to(PACKAGE):
                name = path.relative_to(PACKAGE).as_posix()
                if name not in seen and (name, frame.f_code.co_name) not in RECORD_PROPERTIES:
                    seen.append(name)

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return seen


def test_a_width_reaches_the_served_weight_through_five_files() -> None:
    torch.manual_seed(0)
    model = slimify.convert(_net().eval(), (0.25, 0.5, 1.0), 8, torch.randn(1, 3, 16, 16))
    width, conv = slimify.width, model[3]  # resolved before: the lazy name lookup is not the path

    def run() -> None:
        with width(model, 0.6):
            assert conv.weight.shape == (40, 24, 3, 3)  # make_divisible(64·0.6, 8), make_divisible(32·0.6, 8)

    assert _files_called(run) == PATH_OF_A_WIDTH


def test_a_per_group_configuration_takes_the_same_path() -> None:
    torch.manual_seed(0)
    model = slimify.convert(_net().eval(), (0.25, 0.5, 1.0), 8, torch.randn(1, 3, 16, 16))
    width, conv = slimify.width, model[3]
    config = {g: 16 if c == 32 else 48 for g, c in channels_of(model, 1.0).items()}

    def run() -> None:
        with width(model, config):
            assert conv.weight.shape == (48, 16, 3, 3)

    assert _files_called(run) == PATH_OF_A_WIDTH


def _imported_names(path: Path) -> set[str]:
    return {a.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
            for a in node.names}


def test_rewrite_applies_cuts_and_counts_no_channels() -> None:
    """No rewrite module imports a rounding, balancing or cutting helper of analysis, nor computes
    a step of its own (``lcm(unit, divisor)`` is ``analysis/plan.unit_step``, used once)."""
    for path in sorted((PACKAGE / "rewrite").glob("*.py")):
        assert not _imported_names(path) & COUNTING, path.name
        source = path.read_text()
        assert "gcd(" not in source and "lcm(" not in source, path.name
