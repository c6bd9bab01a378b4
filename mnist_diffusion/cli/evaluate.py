"""`mnistdiff eval`: sample quality of a run, or of samples made elsewhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import SAMPLE_DEFAULTS
from ..errors import UserError
from ..evaluation.uncertainty import BOOTSTRAP_RESAMPLES, MAX_REPEATS, MAX_RESAMPLES
from .app import console, say
from .options import RunChoice, SamplingRequest, num_samples, run_command


@run_command("eval", sampling=SAMPLE_DEFAULTS, data_dir=True)
def eval_command(
    samples: Annotated[
        Optional[Path],
        typer.Option(
            help="Score samples made elsewhere instead of a run (not with --run; -n and the sampling flags then do not "
            "apply): .safetensors, .npy, a folder of PNGs, or a PNG grid."
        ),
    ] = None,
    n: num_samples("Samples to draw and score (FID depends on N).", min=10) = 10_000,
    n_samples: Annotated[Optional[int], typer.Option("--n-samples", min=10, hidden=True)] = None,  # -n's old name
    nll: Annotated[bool, typer.Option("--nll", help="Also the NLL bound in bits/dim on test images.")] = False,
    nll_images: Annotated[int, typer.Option(min=1, help="Test images for --nll.")] = 1000,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")] = False,
    repeats: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_REPEATS,
            help="Independent sample sets to draw (seeds derived from --seed); K > 1: a t-interval over them.",
        ),
    ] = 1,
    bootstrap: Annotated[
        int,
        typer.Option(
            min=0,
            max=MAX_RESAMPLES,
            help="Bootstrap resamples of the samples for the intervals when --repeats is 1 (0: none).",
        ),
    ] = BOOTSTRAP_RESAMPLES,
    cas: Annotated[
        bool,
        typer.Option(
            "--cas",
            help="Also the Classification Accuracy Score (conditional runs): a classifier trained on the samples.",
        ),
    ] = False,
    where: RunChoice = None,
    sampling: SamplingRequest = None,
):
    """Score a run's samples against the MNIST test set (FID, KID, precision/recall, ...).

    The same metrics for N real training images are printed beside them, as the floor.
    Example: mnistdiff eval -n 2000 --steps 10"""
    from ..data.mnist import ensure_mnist
    from ..evaluation.scoring import evaluate_images, evaluate_run
    from ..pictures.grids import load_samples
    from ..runs.loader import guidance_kinds_of
    from ..runtime import setup_device
    from .tables import report_table

    if samples is not None and where.run is not None:
        raise UserError("give --run or --samples, not both")
    if samples is not None and (repeats > 1 or cas):
        raise UserError("--repeats and --cas sample from a run: not with --samples")
    images = load_samples(samples) if samples is not None else None  # a bad file fails before any download
    torch_device = setup_device(where.device)
    ensure_mnist(where.data_dir, log=say)
    progress = not json_output
    if images is not None:
        result = evaluate_images(
            images,
            data_dir=where.data_dir,
            seed=sampling.settings.seed,
            device=torch_device,
            progress=progress,
            bootstrap=bootstrap,
        )
        result["samples"] = str(samples)
    else:
        run_dir = where.folder()
        settings = sampling.for_run(guidance_kinds_of(run_dir))
        result = evaluate_run(
            run_dir,
            settings,
            n_samples=n if n_samples is None else n_samples,
            device=torch_device,
            data_dir=where.data_dir,
            nll_images=nll_images if nll else 0,
            progress=progress,
            repeats=repeats,
            bootstrap=bootstrap,
            with_cas=cas,
        )
    if json_output:
        console.print_json(json.dumps(result))
    else:
        console.print(report_table(result))
        if samples is None:
            k = result["evaluation"]
            console.print(
                f"saved {run_dir / 'eval.json'}: evaluation {k} of the run, {run_dir.name}@{k} to `mnistdiff compare`",
                highlight=False,
                markup=False,
            )
