"""The ``slimify`` command line (click). Nothing outside this folder imports click."""
