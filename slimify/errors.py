"""Exceptions and warnings slimify raises on bad input, so callers (and the CLI) can tell them from bugs."""

__all__ = ["SlimifyError", "SlimifyWarning"]


class SlimifyError(ValueError):
    """A problem with what the user asked for: the message says what is wrong and how to fix it."""


class SlimifyWarning(UserWarning):
    """Something the user should know that does not stop the work (a file ``load`` cannot rebuild)."""
