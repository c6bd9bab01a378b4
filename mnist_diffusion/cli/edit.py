"""`mnistdiff inpaint`, `interpolate` and `invert`: editing real or drawn digits with a trained
run. Each takes the run, seed, device, precision and sampling flags of `sample`; what a sampling
flag left out means differs (config's INPAINT_DEFAULTS, INTERPOLATE_DEFAULTS, INVERT_DEFAULTS),
and each --help says it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .. import config
from ..errors import UserError
from .app import console, say
from .options import (
    PANEL,
    RunChoice,
    SamplingRequest,
    Scale,
    int_list,
    num_samples,
    output_to,
    run_command,
    tensors_to,
    wrote,
)

if TYPE_CHECKING:
    from ..data.clusters import ClusterMatcher
    from ..runs.loader import LoadedRun

Images = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--image",
        help="A digit as a PNG: 28x28 greyscale, or any greyscale PNG (resized, with a notice). Repeatable; "
        "with --test-index, these come first.",
    ),
]
TestIndex = Annotated[Optional[str], typer.Option(help="MNIST test digits by index, such as 0,5,9 (0 to 9999).")]
Digit = Annotated[Optional[int], typer.Option(min=0, max=9, help="Conditional runs: make it this digit.")]


def _digits(images: list[Path] | None, test_index: str | None, data_dir: Path):
    """The digits the flags name, [N x 1 x 28 x 28] in [0, 1]."""
    from ..pictures.inputs import load_digits

    indices = int_list(test_index, "--test-index") if test_index is not None else []
    return load_digits(list(images or []), indices, data_dir, say)


@run_command(sampling=config.INPAINT_DEFAULTS, without=("sampler", "eta"), data_dir=True)
def inpaint(
    image: Images = None,
    test_index: TestIndex = None,
    mask: Annotated[
        str,
        typer.Option(
            help="What is missing: left, right, top, bottom, center (the middle 14x14), random:P (each pixel with "
            "probability P) or a 28x28 PNG, white where missing."
        ),
    ] = "right",
    n: num_samples("Completions per digit.") = 4,
    digit: Digit = None,
    jumps: Annotated[
        int, typer.Option(help="RePaint: after each J steps, go back J steps and redo them.")
    ] = config.INPAINT_JUMPS,
    resample: Annotated[
        Optional[int],
        typer.Option(
            help="RePaint: walk each block of J steps R times in all (1: never; default "
            f"{config.INPAINT_MATCHED_RESAMPLE} with matched clusters, else {config.INPAINT_RESAMPLE}).",
        ),
    ] = None,
    match_clusters: Annotated[
        Optional[bool],
        typer.Option(
            "--match-clusters/--no-match-clusters",
            help="Clustered runs: draw each completion's cluster from those of the training digits that agree with "
            "the visible pixels, and guide towards it (--cluster-guidance, default 1.6). Default: on where "
            "--data-dir holds MNIST's training digits.",
            show_default=False,
        ),
    ] = None,
    output: output_to("PNG grid to write.") = Path("inpaint.png"),
    scale: Scale = 2,
    save_tensor: tensors_to("the completions (N n, 1, 28, 28) in [0, 1], the originals and the mask") = None,
    where: RunChoice = None,
    sampling: SamplingRequest = None,
):
    """Fill in the missing part of digits (RePaint).

    One row per digit: the original, the masked input, the completions.
    Ancestral steps (DDIM, eta 1), evenly spaced unless --spacing is given.
    On a clustered run (the default preset) each completion's cluster agrees with
    the visible part (--match-clusters), where --data-dir holds MNIST's training
    digits; without them, or with --no-match-clusters, no cluster is drawn and the
    visible part alone decides the digit (--cluster-guidance S draws one, as
    sample does).

    Example: mnistdiff inpaint --test-index 0,5,9 --mask top -n 6 -o inpaint.png"""
    from ..io import check_output
    from ..pictures.inputs import parse_mask
    from ..sampling.edit_outputs import inpaint_to_files
    from ..sampling.outputs import PNG, TENSORS

    check_output(output, PNG, "-o")
    check_output(save_tensor, TENSORS, "--save-tensor")
    missing = parse_mask(mask, seed=sampling.settings.seed)
    images = _digits(image, test_index, where.data_dir)
    loaded = where.load()
    settings = sampling.for_run(loaded.guidance_kinds)
    match = _matcher(loaded, where.data_dir, match_clusters)
    repaint = {"n": n, "digit": digit, "jumps": jumps, "resample": resample, "match": match}
    inpaint_to_files(loaded, images, missing, output, settings, **repaint, scale=scale, save_tensor=save_tensor)
    wrote(output, save_tensor)


def _matcher(loaded: LoadedRun, data_dir: Path, match_clusters: bool | None) -> ClusterMatcher | None:
    """`inpaint`'s ClusterMatcher: asked for, or (left out) on a clustered run whose training digits
    are in ``data_dir``; where they are not, or not the ones the run was clustered on, one line says
    so and no cluster is drawn."""
    from ..data.mnist import has_split

    if match_clusters is not None:
        return loaded.cluster_matcher(data_dir, log=say) if match_clusters else None
    if not loaded.clustered:
        return None
    if not has_split(data_dir, "train"):
        why = f"no MNIST training digits in {data_dir} (`mnistdiff data download` fetches them)"
    else:
        try:
            return loaded.cluster_matcher(data_dir, log=say)
        except UserError as e:
            why = str(e)
    say(f"clusters not matched, none drawn: {why}")
    return None


@run_command(sampling=config.INTERPOLATE_DEFAULTS, without=("eta",), data_dir=True)
def interpolate(
    seeds: Annotated[
        Optional[str],
        typer.Option(
            help="Walk between the noises of these two seeds, as `sample -n 1 --seed S` draws them "
            "(not with --image or --test-index; default: --seed and the next)."
        ),
    ] = None,
    image: Images = None,
    test_index: TestIndex = None,
    frames: Annotated[
        int, typer.Option(help="Pictures from one end to the other, both included.")
    ] = config.INTERPOLATE_FRAMES,
    digit: Digit = None,
    output: output_to("PNG strip to write, or an animated GIF (.gif).") = Path("interpolate.png"),
    scale: Scale = 2,
    where: RunChoice = None,
    sampling: SamplingRequest = None,
):
    """Walk between two digits, seeds or real ones, through their noise.

    The ends' noises x_T are interpolated on the sphere (slerp) and each point
    turned into a digit by a deterministic sampler. Real digits (--image twice
    or --test-index A,B) are inverted to x_T first by DDIM inversion; their
    steps are evenly spaced unless --spacing is given.

    Example: mnistdiff interpolate --test-index 3,8 --frames 12 -o walk.gif"""
    from ..io import check_output
    from ..sampling.edit_outputs import interpolate_to_files
    from ..sampling.outputs import PICTURE
    from ..seeds import SEED_MAX, derive_seed

    check_output(output, PICTURE, "-o")
    if image or test_index is not None:
        if seeds is not None:
            raise UserError("give the ends as --seeds or as digits (--image, --test-index), not both")
        ends = _digits(image, test_index, where.data_dir)
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
    loaded = where.load()
    settings = sampling.for_run(loaded.guidance_kinds)
    interpolate_to_files(loaded, a, b, output, settings, frames=frames, digit=digit, scale=scale)
    wrote(output)


@run_command(sampling=config.INVERT_DEFAULTS, without=("sampler", "eta", "steps"), data_dir=True)
def invert(
    image: Images = None,
    test_index: TestIndex = None,
    steps: Annotated[
        Optional[str],
        typer.Option(
            help="Step counts to compare, such as 20,50,100, those up to the run's T "
            f"(default {','.join(map(str, config.INVERT_STEPS))}).",
            rich_help_panel=PANEL,
        ),
    ] = None,
    digit: Digit = None,
    output: output_to("PNG grid: per digit, the original and its reconstruction at each step count.") = Path(
        "invert.png"
    ),
    scale: Scale = 2,
    where: RunChoice = None,
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
    images = _digits(image, test_index, where.data_dir)
    loaded = where.load()
    top = loaded.schedule.num_timesteps
    counts = counts or [s for s in config.INVERT_STEPS if s <= top] or [top]
    rows = invert_to_files(
        loaded, images, output, sampling.for_run(loaded.guidance_kinds), steps=sorted(counts), digit=digit, scale=scale
    )
    console.print(f"DDIM inversion and back of {len(images)} digit(s), run {loaded.path.name}:", markup=False)
    console.print(inversion_table(rows))
    wrote(output)
