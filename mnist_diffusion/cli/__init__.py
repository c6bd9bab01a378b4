"""The `mnistdiff` command line: thin Typer commands that check flags and hand off to one
importable function each. :data:`app` is the console script's entry point."""

# isort: off
from . import train, sample, edit, evaluate, compare, report, tools, studio  # noqa: F401  (each registers its commands, in this order)
from .app import app

# isort: on

__all__ = ["app"]
