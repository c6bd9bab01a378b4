"""The Typer app, its one-line error handling, and the version option."""

from __future__ import annotations

import functools
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..errors import UserError

app = typer.Typer(
    name="mnistdiff",
    help="Train, sample and evaluate denoising diffusion models (DDPM and successors) on MNIST.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Get the MNIST data set.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)


def say(message: str) -> None:
    """A line for the user on stderr (progress notes, warnings), never read as markup."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


def user_errors(fn):
    """Turn UserError (and OS errors on files) into one red line and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err_console.print(f"[red]Error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            err_console.print(f"[red]Error:[/red] {escape(where + (e.strerror or str(e)))}", highlight=False,
                              soft_wrap=True)  # fmt: skip
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("Interrupted.")
            raise typer.Exit(130) from None

    return wrapper


def checked(make, *args, **kwargs):
    """``make(*args, **kwargs)``, with a ValueError (a bad setting) turned into a UserError."""
    try:
        return make(*args, **kwargs)
    except ValueError as e:
        raise UserError(str(e)) from None


def _version(value: bool):
    if value:
        import torch

        console.print(f"mnistdiff {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
):
    """Train, sample and evaluate denoising diffusion models (DDPM and successors) on MNIST."""
