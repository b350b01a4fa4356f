"""The ``slimify`` command line: thin click commands over the public API.

Each family of commands lives beside the code it drives (``slimify/train/cli.py`` …) and is
registered here, so this file stays a table of contents.
"""
from __future__ import annotations

import importlib
import sys

import click

from slimify.errors import SlimifyError

__all__ = ["main"]

# module path → names of click commands it defines (lazy: `slimify --help` imports no torch)
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "slimify.cli_model": ("convert", "inspect"),
    "slimify.train.cli": ("finetune", "calibrate", "eval", "demo"),
    "slimify.cli_deploy": ("export", "profile", "pick"),
    "slimify.cli_reorder": ("reorder",),
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


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input becomes one line on stderr and exit code 2, never a traceback."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(2)
    except (SlimifyError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    sys.exit(0)


if __name__ == "__main__":
    main()
