"""The Typer app, its one-line error handling, and the version option."""

from __future__ import annotations

import functools
import re
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..errors import UserError

app = typer.Typer(
    name="mnistdiff",
    help="Train, sample and evaluate denoising diffusion models (DDPM and successors) on MNIST.\n\n"
    "Example: mnistdiff train --epochs 5, then mnistdiff sample -n 64 -o grid.png",
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


# What the allocators say when memory runs out: torch's CPU allocator ("can't allocate memory"),
# CUDA's and MPS's ("out of memory"), the C library's (ENOMEM's "Cannot allocate memory"), C++'s new.
_ALLOCATION_FAILURES = ("can't allocate memory", "cannot allocate memory", "out of memory", "std::bad_alloc")


def allocation_failure(error: BaseException) -> bool:
    """Whether ``error`` says that memory could not be allocated: a MemoryError, a
    torch.OutOfMemoryError, or a RuntimeError of an allocator."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and any(s in str(error).lower() for s in _ALLOCATION_FAILURES)


def _error_line(message: str) -> None:
    err_console.print(f"[red]Error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def user_errors(fn):
    """Turn UserError (and OS errors on files, and running out of memory) into one red line and
    a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            _error_line(str(e))
            raise typer.Exit(e.exit_code) from None
        except (MemoryError, RuntimeError) as e:
            if not allocation_failure(e):
                raise
            _error_line(
                f"out of memory ({_first_line(e)}): ask for less at once, with a smaller -n or --batch-size "
                "(or a smaller model)"
            )
            raise typer.Exit(1) from None
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            err_console.print(
                f"[red]Error:[/red] {escape(where + (e.strerror or str(e)))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("Interrupted.")
            raise typer.Exit(130) from None

    return wrapper


def _first_line(error: BaseException) -> str:
    """The gist of an allocator's message: its first line, without torch's "[enforce fail at ...]
    err == 0." prefix."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"^\[enforce fail at [^]]*\]\s*(err == 0\.\s*)?", "", text)


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
