"""Exceptions slimify raises on bad input, so callers (and the CLI) can tell them from bugs."""

__all__ = ["SlimifyError"]


class SlimifyError(ValueError):
    """A problem with what the user asked for: the message says what is wrong and how to fix it."""
