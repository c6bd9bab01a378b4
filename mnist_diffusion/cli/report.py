"""`mnistdiff report`: a run's report.html, one self-contained page."""

from __future__ import annotations

import os

from ..config import DEFAULT_ARTIFACTS_DIR
from .app import app, console, user_errors
from .options import ArtifactsDir, RunArg


@app.command()
@user_errors
def report(run: RunArg = None, artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR):
    """Write a run's report.html: command, config, machine, curves, samples, evaluation, files.

    One self-contained file (images inside it, nothing fetched), readable offline. A run with
    missing or damaged files gets a report that names them. Example: mnistdiff report --run 3"""
    from ..errors import UserError
    from ..report.run_report import write_report
    from ..runs.store import CONFIG, resolve_run
    from ..runtime import setup_device

    try:  # a run folder (one with a config.json) or a run's name: never any other folder
        run_dir = resolve_run(run, artifacts_dir)
    except UserError:
        if run and os.path.isdir(run):
            raise UserError(
                f"{run} is not a run folder (it has no {CONFIG}); report.html is written only into one"
            ) from None
        raise
    setup_device("cpu")  # the threads train uses; the trajectory in the report is drawn on the CPU
    console.print(f"wrote {write_report(run_dir)}", highlight=False, markup=False, soft_wrap=True)
