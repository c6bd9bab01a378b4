"""`mnistdiff sample`: digits from a trained run as a PNG grid (and a tensor, a trajectory, and
SDEdits of a drawing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import SAMPLE_DEFAULTS, SDEDIT_STRENGTH
from ..errors import UserError
from .app import say
from .options import RunChoice, SamplingRequest, Scale, num_samples, output_to, run_command, tensors_to, wrote


@run_command(sampling=SAMPLE_DEFAULTS)
def sample(
    n: num_samples("How many digits to draw.") = 8,
    output: output_to("PNG grid to write.") = Path("grid.png"),
    nrow: Annotated[Optional[int], typer.Option(min=1, help="Digits per grid row.")] = None,
    scale: Scale = 2,
    save_tensor: tensors_to("the samples (N, 1, 28, 28) in [0, 1], with the settings in its metadata,") = None,
    digit: Annotated[
        Optional[int], typer.Option(min=0, max=9, help="Conditional runs: draw this digit (not with --labels).")
    ] = None,
    labels: Annotated[
        Optional[str], typer.Option(help="Conditional runs: digits to draw, e.g. 0,1,2 (not with --digit).")
    ] = None,
    trajectory: Annotated[
        Optional[Path],
        typer.Option(help="Also write the denoising process of the first samples: a PNG, or an animated GIF (.gif)."),
    ] = None,
    init: Annotated[
        Optional[Path],
        typer.Option(help="SDEdit: start from this drawing (a PNG, resized to 28x28 if needed) noised to --strength."),
    ] = None,
    strength: Annotated[
        Optional[float],
        typer.Option(
            help=f"With --init: how far to noise the drawing, in (0, 1]; 1 is pure noise (default {SDEDIT_STRENGTH:g})."
        ),
    ] = None,
    where: RunChoice = None,
    sampling: SamplingRequest = None,
):
    """Draw digits from a trained run and save them as a PNG grid.

    Example: mnistdiff sample -n 64 -o grid.png --steps 10

    Example: mnistdiff sample --init scribble.png --strength 0.6 -n 8 -o cleaned.png"""
    from ..io import check_output
    from ..pictures.grids import default_nrow
    from ..pictures.inputs import read_digit
    from ..sampling.editing import check_strength
    from ..sampling.generate import count_for, default_conditional_nrow, parse_labels
    from ..sampling.outputs import PICTURE, PNG, TENSORS, sample_to_files

    check_output(output, PNG, "-o")
    check_output(save_tensor, TENSORS, "--save-tensor")
    check_output(trajectory, PICTURE, "--trajectory")
    count_for(n, "-n", scale=scale)  # before the labels of n samples are made
    if strength is not None and init is None:
        raise UserError("--strength needs --init, the drawing to start from")
    if digit is not None and labels:
        raise UserError("give --digit or --labels, not both")
    strength = check_strength(SDEDIT_STRENGTH if strength is None else strength)
    drawing = read_digit(init, say) if init is not None else None
    loaded = where.load()
    label_tensor = parse_labels(digit, labels, n, loaded.conditional)
    if nrow is None:
        nrow = default_conditional_nrow(n) if loaded.conditional and digit is None and not labels else default_nrow(n)
    sample_to_files(
        loaded,
        n,
        output,
        sampling.for_run(loaded.guidance_kinds),
        labels=label_tensor,
        nrow=nrow,
        scale=scale,
        save_tensor=save_tensor,
        trajectory=trajectory,
        init=drawing,
        strength=strength,
    )
    wrote(output, save_tensor)
