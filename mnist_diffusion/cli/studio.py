"""`mnistdiff studio`: a local web page to sample, draw, noise and walk with a trained run."""

from __future__ import annotations

import importlib
import signal
import threading
from typing import Annotated

import typer

from ..config import DEFAULT_ARTIFACTS_DIR, DEFAULT_DATA_DIR
from ..errors import UserError
from .app import app, console, say, user_errors
from .options import ArtifactsDir, DataDir, Device, RunArg

EXTRA = "pip install 'mnist-diffusion[studio]'"
SERVER_MODULES = ("fastapi", "uvicorn")


def check_studio_extra() -> None:
    """A UserError naming the extra to install when the web server's packages are missing."""
    for name in SERVER_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UserError(f"the studio needs {name}, which is not installed: {EXTRA}") from None


@app.command()
@user_errors
def studio(
    run: RunArg = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")] = 8000,
    host: Annotated[
        str,
        typer.Option(help="Address to listen on. Anything but 127.0.0.1 lets other machines use the studio."),
    ] = "127.0.0.1",
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open the page in a browser.")] = False,
    artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    device: Device = "auto",
):
    """Open a web page to watch a run sample step by step, finish a digit you draw, noise a digit
    and walk between two: a local server (needs the studio extra), nothing written to the run.

    Example: mnistdiff studio --run 3"""
    check_studio_extra()
    import webbrowser

    from ..runs.store import resolve_run
    from ..runtime import setup_device
    from ..studio.engine import Studio
    from ..studio.server import LOOPBACK, bind, create_app, serve, url_of

    run_dir = resolve_run(run, artifacts_dir)
    engine = Studio(artifacts_dir, data_dir, setup_device(device), extra_run=run_dir)
    try:
        engine.run(run_dir.name)  # loaded before the page asks, and a broken run is an error here
        try:
            sock = bind(host, port)
        except OSError as e:
            raise UserError(
                f"cannot listen on {host}:{port} ({e.strerror or e}): pick another --port or --host"
            ) from None
        engine.warm_up(run_dir.name)
        url = url_of(sock)
        if host not in LOOPBACK:
            say(f"warning: listening on {host}: anyone who can reach this machine can use the studio")
        if threading.current_thread() is threading.main_thread():  # Ctrl+C stops it from the moment it says so,
            signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
        console.print(f"studio for run {run_dir.name} at {url} (Ctrl+C to stop)", highlight=False, markup=False)
        if not no_browser:
            webbrowser.open(url)
        serve(create_app(engine, host), sock)
    finally:
        engine.close()
