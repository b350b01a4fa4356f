"""The ``slimify`` command line (click). Nothing outside this folder imports click.

``slimify.cli:main`` stays the entry point that scripts installed before the restructure call."""
from slimify.cli.app import main

__all__ = ["main"]
