"""`mnistdiff inpaint`, `interpolate` and `invert`: editing real or drawn digits with a trained
run. Each takes the run, seed, device, precision and sampling flags of `sample`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import (
    DEFAULT_ARTIFACTS_DIR,
    DEFAULT_DATA_DIR,
    INPAINT_JUMPS,
    INPAINT_RESAMPLE,
    INTERPOLATE_FRAMES,
    INVERT_STEPS,
)
from ..errors import UserError
from .app import app, console, say, user_errors
from .options import ArtifactsDir, DataDir, Device, RunArg, SamplingRequest, int_list, sampling_options

Images = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--image", help="A digit as a PNG: 28x28 greyscale, or any greyscale PNG (resized, with a notice). Repeatable."
    ),
]
TestIndex = Annotated[Optional[str], typer.Option(help="MNIST test digits by index, such as 0,5,9 (0 to 9999).")]
Digit = Annotated[Optional[int], typer.Option(min=0, max=9, help="Conditional runs: make it this digit.")]
Scale = Annotated[int, typer.Option(min=1, max=16, help="Pixel scale of the picture.")]


def _digits(images: list[Path] | None, test_index: str | None, data_dir: Path):
    """The digits the flags name, [N x 1 x 28 x 28] in [0, 1]."""
    from ..pictures.inputs import load_digits

    indices = int_list(test_index, "--test-index") if test_index is not None else []
    return load_digits(list(images or []), indices, data_dir, say)


def _load(run: str | None, artifacts_dir: Path, device: str):
    from ..runs.loader import load_run
    from ..runs.store import resolve_run
    from ..runtime import setup_device

    return load_run(resolve_run(run, artifacts_dir), setup_device(device))


@app.command()
@user_errors
@sampling_options(without=("sampler", "eta"))
def inpaint(
    run: RunArg = None,
    image: Images = None,
    test_index: TestIndex = None,
    mask: Annotated[
        str,
        typer.Option(
            help="What is missing: left, right, top, bottom, center (the middle 14x14), random:P (each pixel with "
            "probability P) or a 28x28 PNG, white where missing."
        ),
    ] = "right",
    n: Annotated[int, typer.Option("-n", "--num-samples", help="Completions per digit.")] = 4,
    digit: Digit = None,
    jumps: Annotated[
        int, typer.Option(help="RePaint: after each J steps, go back J steps and redo them.")
    ] = INPAINT_JUMPS,
    resample: Annotated[
        int, typer.Option(help="RePaint: walk each block of J steps R times in all (1: never).")
    ] = INPAINT_RESAMPLE,
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG grid to write.")] = Path("inpaint.png"),
    scale: Scale = 2,
    save_tensor: Annotated[
        Optional[Path],
        typer.Option(
            help="Also write the completions (N n, 1, 28, 28) in [0, 1], the originals and the mask as safetensors."
        ),
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    device: Device = "auto",
    artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR,
    sampling: SamplingRequest = None,
):
    """Fill in the missing part of digits (RePaint).

    One row per digit: the original, the masked input, the completions.
    Ancestral steps (DDIM, eta 1), evenly spaced unless --spacing is given.
    On a clustered run no cluster is drawn, so the visible part decides the digit
    (--cluster-guidance S draws one, as sample does).

    Example: mnistdiff inpaint --test-index 0,5,9 --mask top -n 6 -o inpaint.png"""
    from ..io import check_output
    from ..pictures.inputs import parse_mask
    from ..sampling.edit_outputs import inpaint_to_files
    from ..sampling.outputs import PNG, TENSORS

    check_output(output, PNG, "-o")
    check_output(save_tensor, TENSORS, "--save-tensor")
    missing = parse_mask(mask, seed=sampling.settings.seed)
    images = _digits(image, test_index, data_dir)
    loaded = _load(run, artifacts_dir, device)
    inpaint_to_files(
        loaded,
        images,
        missing,
        output,
        sampling.for_run(loaded.guidance_kinds),
        n=n,
        digit=digit,
        jumps=jumps,
        resample=resample,
        scale=scale,
        save_tensor=save_tensor,
    )
    console.print(f"wrote {output}" + (f" and {save_tensor}" if save_tensor else ""), highlight=False, markup=False)


@app.command()
@user_errors
@sampling_options(without=("sampler", "eta"))
def interpolate(
    run: RunArg = None,
    seeds: Annotated[
        Optional[str],
        typer.Option(
            help="Walk between the noises of these two seeds, as `sample -n 1 --seed S` draws them "
            "(default: --seed and the next)."
        ),
    ] = None,
    image: Images = None,
    test_index: TestIndex = None,
    frames: Annotated[
        int, typer.Option(help="Pictures from one end to the other, both included.")
    ] = INTERPOLATE_FRAMES,
    sampler: Annotated[
        str, typer.Option(help="ddim (eta 0) or dpmpp-2m: a deterministic sampler.", rich_help_panel="Sampling")
    ] = "ddim",
    digit: Digit = None,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="PNG strip to write, or an animated GIF (.gif).")
    ] = Path("interpolate.png"),
    scale: Scale = 2,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    device: Device = "auto",
    artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR,
    sampling: SamplingRequest = None,
):
    """Walk between two digits, seeds or real ones, through their noise.

    The ends' noises x_T are interpolated on the sphere (slerp) and each point
    turned into a digit by a deterministic sampler. Real digits (--image twice
    or --test-index A,B) are inverted to x_T first by DDIM inversion; their
    steps are evenly spaced unless --spacing is given.

    Example: mnistdiff interpolate --test-index 3,8 --frames 12 -o walk.gif"""
    import dataclasses

    from ..io import check_output
    from ..sampling.edit_outputs import interpolate_to_files
    from ..sampling.outputs import PICTURE
    from ..seeds import SEED_MAX, derive_seed

    check_output(output, PICTURE, "-o")
    if sampler not in ("ddim", "dpmpp-2m"):
        raise UserError(f"--sampler must be ddim or dpmpp-2m for an interpolation (got {sampler!r})")
    if image or test_index is not None:
        if seeds is not None:
            raise UserError("give the ends as --seeds or as digits (--image, --test-index), not both")
        ends = _digits(image, test_index, data_dir)
        if len(ends) != 2:
            raise UserError(f"an interpolation has two ends; --image and --test-index gave {len(ends)}")
        a, b = ends[0], ends[1]
    else:
        seed = sampling.settings.seed
        pair = (
            int_list(seeds, "--seeds", high=SEED_MAX, example="0,1")
            if seeds is not None
            else [seed, derive_seed(seed, 1)]
        )
        if len(pair) != 2:
            raise UserError(f"--seeds takes two different seeds, such as 0,1 (got {seeds!r})")
        a, b = pair
    loaded = _load(run, artifacts_dir, device)
    settings = dataclasses.replace(sampling.for_run(loaded.guidance_kinds), sampler=sampler)
    interpolate_to_files(loaded, a, b, output, settings, frames=frames, digit=digit, scale=scale)
    console.print(f"wrote {output}", highlight=False, markup=False)


@app.command()
@user_errors
@sampling_options(without=("sampler", "eta", "steps"))
def invert(
    run: RunArg = None,
    image: Images = None,
    test_index: TestIndex = None,
    steps: Annotated[
        Optional[str],
        typer.Option(
            help=f"Step counts to compare, such as 20,50,100 (default {','.join(map(str, INVERT_STEPS))}, "
            "those up to the run's T).",
            rich_help_panel="Sampling",
        ),
    ] = None,
    digit: Digit = None,
    output: Annotated[
        Path,
        typer.Option(
            "-o", "--output", help="PNG grid: per digit, the original and its reconstruction at each step count."
        ),
    ] = Path("invert.png"),
    scale: Scale = 2,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    device: Device = "auto",
    artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR,
    sampling: SamplingRequest = None,
):
    """Invert digits to noise and back; print the error for each step count.

    DDIM inversion (the deterministic ODE from x_0 to x_T), then DDIM back;
    the error is the mean squared error and PSNR over the digits.
    Steps are evenly spaced unless --spacing is given.

    Example: mnistdiff invert --test-index 0,1,2,3 --steps 20,50,100 -o invert.png"""
    from ..io import check_output
    from ..sampling.edit_outputs import invert_to_files
    from ..sampling.outputs import PNG
    from .tables import inversion_table

    check_output(output, PNG, "-o")
    counts = int_list(steps, "--steps", low=1, example="20,50,100") if steps is not None else None
    images = _digits(image, test_index, data_dir)
    loaded = _load(run, artifacts_dir, device)
    top = loaded.schedule.num_timesteps
    counts = counts or [s for s in INVERT_STEPS if s <= top] or [top]
    rows = invert_to_files(
        loaded, images, output, sampling.for_run(loaded.guidance_kinds), steps=sorted(counts), digit=digit, scale=scale
    )
    console.print(f"DDIM inversion and back of {len(images)} digit(s), run {loaded.path.name}:", markup=False)
    console.print(inversion_table(rows))
    console.print(f"wrote {output}", highlight=False, markup=False)
