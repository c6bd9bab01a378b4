"""`mnistdiff report`: a run's report.html, one self-contained page."""

from __future__ import annotations

import os

from .app import console
from .options import RunChoice, run_command


@run_command(device="cpu")
def report(where: RunChoice = None):
    """Write a run's report.html: command, config, machine, curves, samples, evaluation, files.

    One self-contained file (images inside it, nothing fetched), readable offline. A run with
    missing or damaged files gets a report that names them. Its denoising trajectory is drawn
    when the report is written, on --device (the CPU unless told: the same run gives the same page).

    Example: mnistdiff report --run 3"""
    from ..errors import UserError
    from ..report.run_report import write_report
    from ..runs.store import CONFIG
    from ..runtime import setup_device

    run = where.run
    try:  # a run folder (one with a config.json) or a run's name: never any other folder
        run_dir = where.folder()
    except UserError:
        if run and os.path.isdir(run):
            raise UserError(
                f"{run} is not a run folder (it has no {CONFIG}); report.html is written only into one"
            ) from None
        raise
    setup_device(where.device)  # on the CPU, the threads train uses
    console.print(f"wrote {write_report(run_dir, where.device)}", highlight=False, markup=False, soft_wrap=True)
