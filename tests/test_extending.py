"""The four recipes of docs/extending.md, each done with a toy: a channel rule, an importance
score, an export format and a CLI command. Each toy is registered the way the recipe says and
removed afterwards."""
from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import click
import numpy as np
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner

import slimify
from slimify.analysis.stages import analyze_model
from slimify.cli.app import COMMANDS, cli, command
from slimify.deploy.formats import FORMATS
from slimify.ordering.registry import SCORES
from slimify.rules.elementwise import passthrough
from slimify.rules.registry import MODULE_RULES, find_module_rule, rule

pytestmark = pytest.mark.usefixtures("one_thread")


class SpatialCumsum(nn.Module):
    """Each channel on its own (a running sum over width): no op rule knows ``cumsum``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(x, dim=-1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), SpatialCumsum(), nn.Conv2d(16, 4, 1)).eval()


def _stem_fixed(model: nn.Module) -> bool:
    report = analyze_model(model, (0.5, 1.0), 4, torch.randn(1, 3, 6, 6)).report
    return any("0 (output" in " ".join(g.origins) for g in report.fixed)


def test_rule_recipe() -> None:
    model = _net()
    assert _stem_fixed(model)  # without a rule the cumsum is a boundary
    rule(SpatialCumsum)(lambda ctx, args, kwargs: passthrough(ctx, args[:1], {}))
    try:
        assert not _stem_fixed(model)
        x = torch.randn(2, 3, 6, 6)
        expected = model(x)
        slimify.convert(model, (0.5, 1.0), 4, example_input=x[:1])
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
        with slimify.width(model, 0.5):
            torch.testing.assert_close(slimify.export(model, 0.5).eval()(x), model(x), rtol=0, atol=1e-6)
    finally:
        MODULE_RULES.unregister(SpatialCumsum)


def test_every_rule_file_registers_by_being_imported_from_the_registry() -> None:
    find_module_rule(nn.Conv2d(1, 1, 1))
    rules = importlib.import_module("slimify.rules")
    missing = [m.name for m in pkgutil.iter_modules(rules.__path__) if f"slimify.rules.{m.name}" not in sys.modules]
    assert not missing


def test_score_recipe(recwarn: pytest.WarningsRecorder) -> None:
    import slimify.cli.reorder  # noqa: F401 - the CLI imported before the score exists: choices and help follow
    @SCORES.register("toy_last_first", help="later channels first (a toy)")
    def toy(model, space, table, data, batches):  # noqa: ANN001, ANN202 - the recipe's signature
        return np.arange(len(table.class_of), dtype=np.float64)

    try:
        model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
        x = torch.randn(2, 3, 5, 5)
        expected = model(x)
        result = slimify.reorder(model, "toy_last_first", example_input=x[:1])
        assert result.method == "toy_last_first" and result.moved > 0 and not recwarn.list
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)  # same function, channels moved
        help_text = CliRunner().invoke(cli, ["reorder", "--help"], terminal_width=200).output
        assert "toy_last_first" in help_text and "later channels first" in help_text
        assert "toy_last_first" in CliRunner().invoke(cli, ["convert", "--help"], terminal_width=200).output
    finally:
        SCORES.unregister("toy_last_first")


@pytest.fixture(scope="module")
def slim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("extending") / "tiny.slim"
    result = CliRunner().invoke(cli, ["convert", "slimify:tinynet", "--input-size", "32", "--num-classes", "5",
                                      "-o", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return path


def test_export_format_recipe(slim: Path) -> None:
    @FORMATS.register(".toyweights", help="the plain model's state dict (a toy)")
    def toy(model, width, path, example, overwrite):  # noqa: ANN001, ANN202 - the recipe's signature
        torch.save(slimify.export(model, width).state_dict(), path)
        return "state dict; load with torch.load"

    try:
        for name in ("export", "pick"):  # help lists the new suffix, even with the CLI imported before
            assert ".toyweights" in CliRunner().invoke(cli, [name, "--help"], terminal_width=200).output
        out = slim.parent / "w050.TOYWEIGHTS"  # suffixes match without case
        result = CliRunner().invoke(cli, ["export", str(slim), "--width", "0.5", "-o", str(out)],
                                    catch_exceptions=False)
        assert result.exit_code == 0 and "state dict; load with torch.load" in result.output, result.output
        expected = slimify.export(slimify.load(slim), 0.5).state_dict()
        got = torch.load(out)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    finally:
        FORMATS.unregister(".toyweights")
    refused = CliRunner().invoke(cli, ["export", str(slim), "--width", "0.5", "-o", str(slim.parent / "x.toyweights")])
    assert refused.exit_code == 2 and ".pt2" in refused.output


def test_command_recipe(slim: Path) -> None:
    @command("toy-switches", epilog="\b\nExample:\n  slimify toy-switches rn50.slim")
    @click.argument("file", type=click.Path(exists=True, dir_okay=False))
    def toy_command(file: str) -> None:
        """Print the switches of a .slim FILE (a toy)."""
        click.echo(" ".join(f"{w:g}" for w in slimify.switches(slimify.load(file))))

    try:
        assert "toy-switches" in CliRunner().invoke(cli, ["--help"]).output
        result = CliRunner().invoke(cli, ["toy-switches", str(slim)], catch_exceptions=False)
        assert result.exit_code == 0 and result.output.strip() == "0.25 0.5 0.75 1"
    finally:
        COMMANDS.unregister("toy-switches")
    assert "toy-switches" not in CliRunner().invoke(cli, ["--help"]).output
