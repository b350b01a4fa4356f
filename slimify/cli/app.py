"""The ``slimify`` command line: thin click commands over the public API.

Each family of commands is a module of this folder (``slimify/cli/train.py`` …) that registers
its commands with :func:`command`; a new module here is a new command, nothing else to edit.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import pkgutil
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from slimify import Registry, SlimifyError

__all__ = ["main", "one_line", "notes", "command", "usage_errors", "COMMANDS"]

COMMANDS = Registry("command")  # name → click command, filled by @command in this folder's modules


def command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """``@click.command(name, …)`` that also registers the command (the one way to add one)."""
    def register(fn: Callable[..., Any]) -> click.Command:
        cmd = click.command(name, **kwargs)(fn)
        COMMANDS.add(name, cmd, help=(fn.__doc__ or "").strip().split("\n")[0])
        return cmd
    return register


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """A :class:`SlimifyError` raised in the block becomes a click usage error: the command cannot
    work with what it was given (one line, exit 2, also when click runs the command directly)."""
    try:
        yield
    except SlimifyError as e:
        raise click.UsageError(str(e)) from None


def load_command_files() -> None:
    """Import every module of ``slimify/cli/``: each registers its commands on import. They
    import click only (torch inside the commands), so listing them is instant."""
    for info in pkgutil.iter_modules(importlib.import_module(__name__.rpartition(".")[0]).__path__):
        importlib.import_module(f"{__name__.rpartition('.')[0]}.{info.name}")


class RegistryGroup(click.Group):
    """A click group whose commands come from the command registry."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        load_command_files()
        return sorted(COMMANDS.names())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        load_command_files()
        found = COMMANDS.find(name)
        return found if isinstance(found, click.Command) else None


@click.group(cls=RegistryGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog="""\b
Your own model classes (a .slim file or MODEL naming 'mypkg.models:MyNet') are imported only from
packages you trust:  slimify --trust-source mypkg inspect mine.slim   (or SLIMIFY_TRUST_SOURCE=mypkg)""")
@click.version_option(package_name="slimify")
@click.option("--trust-source", "trust_source", multiple=True, metavar="PACKAGE",
              help="Allow model classes/factories from PACKAGE (your own code) to be imported; repeatable.")
@click.option("--verbose", is_flag=True, help="Also show what torch's exporters print and other libraries' warnings.")
def cli(trust_source: tuple[str, ...], verbose: bool) -> None:
    """slimify: turn a PyTorch image model into a slimmable network and deploy any width."""
    if verbose:  # read below the CLI as the slimify logger's level (deploy/export_batch.quiet_native_stderr)
        logging.getLogger("slimify").setLevel(logging.DEBUG)
    if trust_source:
        from slimify import trust

        trust(*trust_source)


def one_line(message: str) -> str:
    """The line of an error message that says what is wrong: the first one, or, for an error
    re-raised from a DataLoader worker (its message embeds the worker's traceback), the last."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()] or ["unknown error"]
    if len(lines) > 1 and lines[0].startswith("Caught ") and lines[1].startswith("Original Traceback"):
        return lines[-1].split(": ", 1)[-1]  # "slimify.errors.SlimifyError: what is wrong"
    return lines[0]


def notes(caught: list[warnings.WarningMessage], everything: bool = False) -> list[str]:
    """The warnings of a command as lines for people: slimify's own (all with ``everything``), each
    message once, its first line only (no file, line or category)."""
    home = Path(__file__).resolve().parents[1]
    lines = [one_line(str(w.message)) for w in caught
             if everything or Path(w.filename).resolve().is_relative_to(home)]
    return list(dict.fromkeys(lines))


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input becomes one line on stderr and exit code 2, never a traceback; the
    warnings of a command that succeeds follow its output as ``note:`` lines, each once."""
    from slimify import trusted

    logger = logging.getLogger("slimify")
    level = logger.level
    try:
        with trusted(), warnings.catch_warnings(record=True) as caught:  # --trust-source lasts for this command
            cli.main(args=argv, standalone_mode=False)  # only (tests call main repeatedly)
        for line in notes(caught, everything=logger.isEnabledFor(logging.DEBUG)):
            click.echo(f"note: {line}", err=True)
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
    finally:
        logger.setLevel(level)
    sys.exit(0)


if __name__ == "__main__":
    main()
