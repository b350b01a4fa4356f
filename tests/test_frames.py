"""Library frames are told from the model's by where the installed packages are, never by a
substring of the path (issue 22): a model file in a folder named ``slimify`` or ``torch`` (a
user's project, or this repository cloned the usual way) keeps its line in every message."""
from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import slimify
from slimify.analysis.frames import is_library, is_tracing
from slimify.errors import SlimifyError

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("slimify", "torch")  # names that a path substring took for library code


def _copy_and_import(source: Path, folder: Path) -> types.ModuleType:
    """``source`` copied into ``folder`` (created) and imported from there under a fresh name."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    shutil.copy(source, target)
    name = f"_copied_{folder.parent.name}_{folder.name}_{source.stem}"
    spec = importlib.util.spec_from_file_location(name, target)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _imported(source: Path, folder: Path) -> Iterator[types.ModuleType]:
    module = _copy_and_import(source, folder)
    try:
        yield module
    finally:
        sys.modules.pop(module.__name__, None)


def test_installed_packages_are_library_code_and_folders_named_like_them_are_not(tmp_path: Path) -> None:
    assert is_library(torch.nn.functional.__file__) and is_library(slimify.__file__)
    assert is_library(contextlib.__file__)  # the standard library
    assert not is_library(timm.__file__)  # a package beside torch: its models are model code
    for folder in FOLDERS:
        user_file = tmp_path / folder / "model.py"
        user_file.parent.mkdir()
        user_file.write_text("x = 1\n")
        assert not is_library(str(user_file)) and not is_tracing(str(user_file))
    assert not is_library(str(REPO / "tests" / "test_frames.py"))
    assert not is_library("<string>") and not is_tracing("<eval_with_key>.3")


def test_tracing_machinery_is_narrower_than_the_library() -> None:
    """The tracer skips fx and torch's dispatch but keeps a torch function's own line."""
    import torch.fx.proxy

    assert is_tracing(torch.fx.proxy.__file__) and is_tracing(torch.overrides.__file__)
    assert is_tracing(str(Path(slimify.__file__).parent / "rules" / "reshape.py"))
    assert not is_tracing(F.__file__) and is_library(F.__file__)


@pytest.mark.parametrize("folder", FOLDERS)
def test_model_that_cannot_run_names_its_line_from_a_folder_named_like_a_library(tmp_path: Path,
                                                                                folder: str) -> None:
    """test_foreign_tracing's model, its file copied under ``<folder>/benchmarks/``."""
    with _imported(REPO / "benchmarks" / "foreign_models.py", tmp_path / folder / "benchmarks") as copied:
        model = copied.SizeBranch().eval()
        with pytest.raises(SlimifyError) as info:
            slimify.convert(model, (0.25, 0.5, 1.0), example_input=torch.randn(1, 4, 32, 32))
    assert "expected 3 channels, got 4" in str(info.value)
    assert f"(at {tmp_path / folder / 'benchmarks' / 'foreign_models.py'}:" in str(info.value), str(info.value)


@pytest.mark.parametrize("folder", FOLDERS)
def test_self_check_names_the_line_from_a_folder_named_like_a_library(tmp_path: Path, folder: str) -> None:
    """The location-sensitive tests of test_selfcheck.py, run from a copy of the file in a
    checkout folder named ``slimify`` (the usual clone) or ``torch``."""
    with _imported(REPO / "tests" / "test_selfcheck.py", tmp_path / folder / "tests") as copied:
        copied.test_missed_constraint_is_fixed_with_the_line()
        copied.test_every_missed_constraint_is_found()
        model = copied.BranchNet().eval()
        slimify.convert(model, copied.SWITCHES, example_input=torch.randn(1, 3, 16, 16))
    reasons = [g.reason for g in slimify.report(model).fixed if g.reason.startswith("self-check")]
    assert len(reasons) == 1 and f"{tmp_path / folder / 'tests' / 'test_selfcheck.py'}, line" in reasons[0]
