"""`mnistdiff train`: flags onto a RunConfig (or a resume plan), then the trainer, with Ctrl-C
turned into a checkpoint."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..allocator import prefer_huge_pages
from ..config import DEFAULT_ARTIFACTS_DIR, DEFAULT_DATA_DIR, EVAL_EVERY, EVAL_SAMPLES, SAMPLE_EVERY, build_config
from ..errors import UserError
from .app import app, checked, console, err_console, say, user_errors
from .options import PRECISION_HELP, ArtifactsDir, DataDir, Device

WATCH = "Watching the run"  # the --help section of the monitors' flags
SAMPLE_EVERY_HELP = (
    "Every N steps, a 4x4 grid of samples (always the same seed) into the run's progress/ folder, shown in its "
    "report; 0: none. A grid costs about 4 training steps of the default preset on a 2-core CPU (under 1% of the "
    "run at the default)."
)
EVAL_EVERY_HELP = (
    "Every N steps, the FID of --eval-samples samples (the same seed each time, no autoguidance) into "
    "metrics.jsonl with its cost, and the progress bar; 0: never. Off by default: at 1,000 samples one costs "
    "about 330 training steps of the default preset on a 2-core CPU (a third of the run at every 1,000 steps)."
)
RESUME_HELP = (
    "Continue this run with its saved config. An interrupted run continues in place to its planned end; a finished "
    "one is left as it is. With another --epochs, --steps or --max-steps, a new run starts from this one's "
    "checkpoint and records it as its parent, which stays as it is. A run that another process is training is "
    "refused."
)


def _flag(help: str, *names: str, **kw):
    return typer.Option(*names, help=help, **kw)


@app.command()
@user_errors
def train(
    epochs: Annotated[Optional[int], _flag("Passes over the 60,000 training images.")] = None,
    batch_size: Annotated[Optional[int], _flag("Images per optimizer step.")] = None,
    lr: Annotated[Optional[float], _flag("Peak learning rate (AdamW).")] = None,
    timesteps: Annotated[Optional[int], _flag("T, the number of diffusion steps.")] = None,
    schedule: Annotated[Optional[str], _flag("Noise schedule: linear, cosine or sigmoid.")] = None,
    prediction: Annotated[Optional[str], _flag("Network target: eps (noise) or v.")] = None,
    loss_weighting: Annotated[Optional[str], _flag("none, or min-snr (Hang et al. 2023, gamma 5).")] = None,
    preset: Annotated[str, _flag("default, seed (the original script) or large.")] = "default",
    channels: Annotated[Optional[int], _flag("UNet base width (a multiple of 8); the preset's if not given.")] = None,
    channel_mult: Annotated[Optional[str], _flag("Width multipliers at 28x28, 14x14 and 7x7, e.g. 1,2,4.")] = None,
    conditional: Annotated[bool, _flag("Learn digit labels too (sample --label-guidance).", "--conditional")] = False,
    clusters: Annotated[
        Optional[int],
        _flag(
            "Unconditional runs: learn K k-means clusters of the pixels as labels (no digit labels) to guide with "
            "(sample --cluster-guidance); 0: none. The default preset uses 40."
        ),
    ] = None,
    guide_at: Annotated[
        Optional[float],
        _flag(
            "Runs without digit labels: keep the EMA weights at this share of training as the autoguidance guide "
            "(the default preset: 0.4; others 0.2)."
        ),
    ] = None,
    seed: Annotated[
        Optional[int], _flag("Seeds weights, batch order and noise (0 to 2^63 - 1).", min=0, max=2**63 - 1)
    ] = None,
    steps: Annotated[
        Optional[int],
        _flag(
            "The plan in optimizer steps (default: epochs x steps per epoch); the learning rate and guide follow it."
        ),
    ] = None,
    time_budget: Annotated[
        Optional[str],
        _flag(
            "Train the best model this much time allows here, e.g. 10m, 90s, 1h30m: the steps are planned from the "
            "measured pace (recorded as --steps, so the plan repeats anywhere); start-up and the end grid come on top."
        ),
    ] = None,
    max_steps: Annotated[Optional[int], _flag("Stop at this many optimizer steps in total (0: no limit).")] = None,
    precision: Annotated[Optional[str], _flag(PRECISION_HELP)] = None,
    run_name: Annotated[Optional[str], _flag("Name of the run folder (default: the preset).")] = None,
    resume: Annotated[Optional[str], _flag(RESUME_HELP)] = None,
    grid: Annotated[
        Optional[int],
        _flag("Samples drawn into samples.png at the end (default 64, 80 if --conditional; 0: none).", min=0),
    ] = None,
    compile: Annotated[
        Optional[bool],
        _flag(
            "torch.compile the network. Default: on for fp32 runs of 3,500 steps or more on a Linux CPU without "
            "AVX-512 (a step 1.05x to 1.10x as fast there), off elsewhere; --resume compiles as the run did.",
            "--compile/--no-compile",
        ),
    ] = None,
    cuda_graphs: Annotated[
        bool,
        _flag(
            "CUDA: the whole training step as one CUDA graph, replayed (noise hashed from the step on the device; "
            "recorded in the config, so resume follows).",
            "--cuda-graphs",
        ),
    ] = False,
    sample_every: Annotated[int, _flag(SAMPLE_EVERY_HELP, min=0, rich_help_panel=WATCH)] = SAMPLE_EVERY,
    eval_every: Annotated[int, _flag(EVAL_EVERY_HELP, min=0, rich_help_panel=WATCH)] = EVAL_EVERY,
    eval_samples: Annotated[
        int, _flag("Samples each --eval-every FID scores (FID depends on N).", min=10, rich_help_panel=WATCH)
    ] = EVAL_SAMPLES,
    tensorboard: Annotated[
        bool,
        _flag(
            "Also write TensorBoard events (loss, learning rate, images/s, FID, the progress grids) into the run's "
            "tensorboard/ folder; needs the tensorboard package (pip install tensorboard).",
            "--tensorboard",
            rich_help_panel=WATCH,
        ),
    ] = False,
    device: Device = "auto",
    artifacts_dir: ArtifactsDir = DEFAULT_ARTIFACTS_DIR,
    data_dir: DataDir = DEFAULT_DATA_DIR,
):
    """Train a diffusion model into a new run folder (artifacts/runs/NNNNN-NAME).

    Every flag left out comes from the preset; with --resume, from the run.

    Example: mnistdiff train --epochs 5 --device cuda

    Example: mnistdiff train --time-budget 10m

    Example: mnistdiff train --resume 00003-default --epochs 8"""
    prefer_huge_pages()  # before the first tensor (--resume loads its checkpoint before the device is set up)
    from ..sampling.outputs import end_of_run_grid
    from ..training.trainer import train as train_core

    if conditional and clusters:
        raise UserError("--conditional learns the digit labels; --clusters is for unconditional runs (give one)")
    config_flags = dict(
        num_classes=10 if conditional else clusters,
        channels=channels,
        channel_mult=_int_tuple(channel_mult),
        timesteps=timesteps,
        schedule=schedule,
        prediction=prediction,
        loss_weighting=loss_weighting,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        precision=precision,
        guide_at=guide_at,
        clusters=0 if conditional else clusters,
        step_on_device=True if cuda_graphs else None,
    )
    budget = dict(epochs=epochs, steps=steps, max_steps=max_steps)
    seconds = parse_duration(time_budget) if time_budget is not None else None
    if seconds is not None and (steps is not None or resume is not None):
        raise UserError("--time-budget plans the steps of a new run: give it without --steps and --resume")
    monitors = _monitors(sample_every, eval_every, eval_samples, tensorboard, data_dir)  # before any work
    given = [f"--{k.replace('_', '-')}" for k, v in config_flags.items() if v is not None]
    given += (["--preset"] if preset != "default" else []) + (["--run-name"] if run_name else [])
    with contextlib.ExitStack() as held:
        plan = None
        if resume is not None:
            plan = _resume_plan(resume, artifacts_dir, budget, given, held)
            if plan.action == "finished":
                console.print(
                    f"run {plan.run_dir.name} has finished its plan: nothing to do. To train it further, "
                    "give a longer budget (--epochs, --steps or --max-steps): that writes a new run that "
                    "starts from this one.",
                    highlight=False,
                )
                return
        cfg = plan.cfg if plan is not None else checked(build_config, preset, **config_flags, **budget)
        finishing = threading.Event()  # set while the trained run draws its end grid
        on_finish = None if grid == 0 else _marking(finishing, end_of_run_grid(grid))
        result = _with_ctrl_c(
            lambda stop: train_core(
                cfg,
                data_dir=data_dir,
                artifacts_dir=artifacts_dir,
                run_name=run_name,
                device=device,
                resume=plan,
                compile=compile,
                log=say,
                stop=stop,
                time_budget=seconds,
                cuda_graphs=cuda_graphs or None,
                monitors=monitors,
                on_finish=on_finish,
            ),
            finishing,
        )
    if result.interrupted:
        where = "" if artifacts_dir == DEFAULT_ARTIFACTS_DIR else f" --artifacts-dir {artifacts_dir}"
        say(
            f"Interrupted at step {result.step}: checkpoint saved in {result.run_dir}. "
            f"Continue with: mnistdiff train --resume {result.run_dir.name}{where}"
        )
        raise typer.Exit(130)
    _write_report(result.run_dir)
    console.print(str(result.run_dir), soft_wrap=True, highlight=False, markup=False)


def _resume_plan(resume: str, artifacts_dir: Path, budget: dict, given: list[str], held: contextlib.ExitStack):
    """What ``--resume`` does (training.plan.plan_resume), decided under the run's lock, which
    ``held`` keeps for the training that follows; the flags that would change the run's config
    (``given``) are refused."""
    from ..runs.lock import run_lock
    from ..runs.store import resolve_run
    from ..training.plan import plan_resume

    if given:
        raise UserError(
            "--resume continues a run with its own saved config; only --epochs, --steps and --max-steps "
            f"may be given (got {', '.join(given)})"
        )
    run_dir = resolve_run(resume, artifacts_dir)
    if int(os.environ.get("RANK", "0")) == 0:
        held.enter_context(run_lock(run_dir))  # one writer per run: refused here if another process trains it
    return plan_resume(run_dir, **budget)


def _marking(event: threading.Event, on_finish):
    """``on_finish`` with ``event`` set while it runs."""

    def hook(*args):
        event.set()
        return on_finish(*args)

    return hook


def _monitors(sample_every: int, eval_every: int, eval_samples: int, tensorboard: bool, data_dir: Path) -> list:
    """The trainer's monitors for the watching flags; TensorBoard last, as it reads what the others log.
    A missing TensorBoard is a one-line error here, before any work."""
    from ..monitors.progress import FidMonitor, SampleMonitor

    grids = SampleMonitor(sample_every) if sample_every else None
    monitors = [m for m in (grids, FidMonitor(eval_every, data_dir, n=eval_samples) if eval_every else None) if m]
    if tensorboard:
        from ..monitors.tensorboard import TensorBoardMonitor

        monitors.append(TensorBoardMonitor(grids))
    return monitors


def _write_report(run_dir: Path) -> None:
    """report.html of the finished run (rank 0 only): a failure is one warning line, never a failed run."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from ..report.run_report import write_report

    try:
        say(f"report: {write_report(run_dir)}")
    except Exception as e:  # the run is trained and saved: its report is not worth failing it
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        say(f"warning: the run is saved, but its report could not be written: {reason}")


def _with_ctrl_c(run, finishing: threading.Event):
    """``run(stop)``, where the first Ctrl-C sets ``stop`` (the trainer then saves a checkpoint
    after the current step) and a second one aborts at once. Once ``finishing`` is set (every step
    is trained and saved, and the end grid is being drawn), the first Ctrl-C aborts at once."""
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if finishing.is_set():
            err_console.print(
                "\n[yellow]Stopped while drawing the end grid: every step is trained and checkpointed; "
                "`mnistdiff train --resume` finishes the run."
            )
            raise KeyboardInterrupt
        err_console.print("\n[yellow]Stopping after this step and saving a checkpoint (Ctrl-C again to abort).")

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        return run(stop)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _int_tuple(text: str | None) -> tuple[int, ...] | None:
    """ "1,2,4" -> (1, 2, 4); None stays None."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--channel-mult takes comma-separated integers, e.g. 1,2,4 (got {text!r})") from None


def parse_duration(text: str) -> float:
    """ "10m" -> 600, "90s" -> 90, "1h30m" -> 5400, "1.5h" -> 5400, "45" -> 45 (seconds)."""
    match = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text.strip().lower()
    )
    if not text.strip() or match is None:
        raise UserError(f"--time-budget takes a duration such as 10m, 90s or 1h30m (got {text!r})")
    hours, minutes, seconds = (float(v) if v else 0.0 for v in match.groups())
    total = 3600 * hours + 60 * minutes + seconds
    if not 1 <= total <= 30 * 24 * 3600:
        raise UserError(f"--time-budget must be between 1 second and 30 days (got {text!r})")
    return total
