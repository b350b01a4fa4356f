"""The ``slimify`` command line: thin click commands over the public API.

Each family of commands lives beside the code it drives (``slimify/train/cli.py`` …) and is
registered here, so this file stays a table of contents.
"""
from __future__ import annotations

import importlib
import sys

import click

from slimify.errors import SlimifyError

__all__ = ["main", "one_line"]

# module path → names of click commands it defines (lazy: `slimify --help` imports no torch)
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "slimify.cli_model": ("convert", "inspect"),
    "slimify.train.cli": ("finetune", "calibrate", "eval", "demo"),
    "slimify.cli_deploy": ("export", "profile", "pick"),
    "slimify.cli_reorder": ("reorder",),
    "slimify.cli_search": ("search",),
}


class LazyGroup(click.Group):
    """A click group whose commands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for names in COMMAND_MODULES.values() for name in names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        for module_name, names in COMMAND_MODULES.items():
            if name in names:
                try:
                    module = importlib.import_module(module_name)
                except ModuleNotFoundError as e:
                    if e.name == module_name:
                        return None
                    raise
                return getattr(module, name.replace("-", "_") + "_command", None)
        return None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slimify")
def cli() -> None:
    """slimify: turn a PyTorch image model into a slimmable network and deploy any width."""


def one_line(message: str) -> str:
    """The line of an error message that says what is wrong: the first one, or, for an error
    re-raised from a DataLoader worker (its message embeds the worker's traceback), the last."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()] or ["unknown error"]
    if len(lines) > 1 and lines[0].startswith("Caught ") and lines[1].startswith("Original Traceback"):
        return lines[-1].split(": ", 1)[-1]  # "slimify.errors.SlimifyError: what is wrong"
    return lines[0]


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input becomes one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        click.echo(f"error: {one_line(e.format_message())}", err=True)
        sys.exit(2)
    except (SlimifyError, OSError) as e:  # OSError: unreadable, unwritable, missing, disk full
        click.echo(f"error: {one_line(str(e))}", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    sys.exit(0)


if __name__ == "__main__":
    main()
