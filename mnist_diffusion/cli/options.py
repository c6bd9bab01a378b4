"""Options shared by several commands, each defined once: where runs and data live, the device
(:class:`RunChoice`), and every sampling setting (:func:`sampling_flags`), whose defaults and checks
live in :class:`~mnist_diffusion.config.SamplingConfig` and, for what a flag left out means in each
command, :class:`~mnist_diffusion.config.SamplingDefaults`. :func:`run_command` gives them to a command."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import (
    DEFAULT_ARTIFACTS_DIR,
    DEFAULT_DATA_DIR,
    SAMPLE_DEFAULTS,
    SPACING_RANGE,
    Guidance,
    GuidanceKinds,
    SamplingConfig,
    SamplingDefaults,
)
from ..errors import UserError
from ..seeds import SEED_MAX
from .app import app, checked, console, say, user_errors

ArtifactsDir = Annotated[Path, typer.Option("--artifacts-dir", help="Folder holding runs/ and latest.")]
DataDir = Annotated[Path, typer.Option("--data-dir", help="Folder for MNIST (MNIST/raw/*-ubyte).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")]
RunArg = Annotated[
    Optional[str],
    typer.Option(
        "--run",
        "-r",
        help="A run: its folder, its name (00003-default, or default for the newest of that "
        "name) or its number (3); default: the latest run.",
    ),
]
Scale = Annotated[int, typer.Option(min=1, max=16, help="Pixel scale of the picture.")]


def num_samples(help: str, **limits):
    """The type of -n/--num-samples, each command's count of digits to draw, with its help."""
    return Annotated[int, typer.Option("-n", "--num-samples", help=help, **limits)]


def output_to(help: str):
    """The type of -o/--output, the picture a command writes, with its help."""
    return Annotated[Path, typer.Option("-o", "--output", help=help)]


def tensors_to(what: str):
    """The type of --save-tensor, the safetensors file of ``what`` a command also writes."""
    return Annotated[Optional[Path], typer.Option(help=f"Also write {what} as safetensors.")]


def wrote(*paths: Path | None) -> None:
    """Tell the user which files a command wrote."""
    console.print("wrote " + " and ".join(str(p) for p in paths if p), highlight=False, markup=False)


PRECISION_HELP = (
    "The network in auto (bf16 on CPUs with AVX512-BF16/AMX and NVIDIA GPUs from Ampere on, else "
    "fp32), fp32, bf16, or fp16 (CUDA)."
)

PANEL = "Sampling"  # the --help section of the sampling options
_DEFAULTS = SamplingConfig()


def _option(kind, flag: str, help: str, **limits):
    """A sampling flag's type: ``kind`` with its Typer option, in the "Sampling" part of --help."""
    return Annotated[kind, typer.Option(flag, help=help, rich_help_panel=PANEL, **limits)]


def _scale(flag: str, help: str, **more):
    return _option(Optional[float], flag, help, min=0.0, max=Guidance.MAX, **more)


def _steps_help(d: SamplingDefaults) -> str:
    steps = d.steps()
    default = (
        f"default {steps[d.sampler]}"
        if len(steps) == 1
        else "default: " + ", ".join(f"{name} {count}" for name, count in steps.items())
    )
    ddpm = "ddpm always takes all T; " if "ddpm" in d.samplers else ""
    matched = f"; {d.matched_steps} with matched clusters" if d.matched_steps else ""
    return f"Model evaluations, at most the run's T ({ddpm}{default}{matched})."


def _cluster_default(d: SamplingDefaults) -> str:
    """--cluster-guidance left out: ``d``'s scale, or `sample`'s where `inpaint` matches clusters."""
    if not d.matched_steps:
        return f"{d.cluster_guidance:g}"
    return f"{SAMPLE_DEFAULTS.cluster_guidance:g} with matched clusters, else {d.cluster_guidance:g}"


def _spacing_help(d: SamplingDefaults) -> str:
    default = (
        f"{d.spacing:g}"
        if d.digit_spacing is None
        else f"{d.spacing:g} between seeds, {d.digit_spacing:g} between real digits"
    )
    return (
        "Timestep spacing power p, t_i = T (1 - i/n)^p - 1: 1 even, below 1 more steps at high noise "
        f"(default {default})."
    )


def sampling_flags(d: SamplingDefaults) -> dict[str, tuple[Any, Any]]:
    """name -> (type with its Typer option, default): the flags of SamplingConfig's fields, with the
    help of a command whose flags left out mean ``d``."""
    return {
        "sampler": (_option(str, "--sampler", f"{', '.join(d.samplers)}."), d.sampler),
        "steps": (_option(Optional[int], "--steps", _steps_help(d), min=1), None),
        "spacing": (
            _option(Optional[float], "--spacing", _spacing_help(d), min=SPACING_RANGE[0], max=SPACING_RANGE[1]),
            None,
        ),
        "eta": (_option(float, "--eta", "DDIM noise: 0 deterministic, 1 like DDPM.", min=0.0, max=1.0), _DEFAULTS.eta),
        "seed": (
            _option(
                int,
                "--seed",
                "Random seed (0 to 2^63 - 1): same seed and flags, same images (on one machine and precision).",
                min=0,
                max=SEED_MAX,
            ),
            _DEFAULTS.seed,
        ),
        "autoguidance": (
            _scale(
                "--autoguidance",
                "Autoguidance scale: extrapolate away from the run's early weights "
                f"(runs with a guide; 1: off; default {Guidance.DEFAULTS['auto']:g}).",
            ),
            None,
        ),
        "label_guidance": (
            _scale(
                "--label-guidance",
                "Classifier-free guidance on the digit "
                f"(--conditional runs; 1: off; default {Guidance.DEFAULTS['labels']:g}).",
            ),
            None,
        ),
        "cluster_guidance": (
            _scale(
                "--cluster-guidance",
                "Classifier-free guidance on the pixel cluster (--clusters runs, the default preset; "
                f"1: off; default {_cluster_default(d)}).",
            ),
            None,
        ),
        "guidance_max_sigma": (
            _option(
                Optional[float],
                "--guidance-max-sigma",
                "Guide only at noise levels sigma = sqrt((1 - alpha_bar) / alpha_bar) up to this; a step "
                "above it is one plain network call (default: every step guided).",
                min=Guidance.MAX_SIGMA_RANGE[0],
                max=Guidance.MAX_SIGMA_RANGE[1],
            ),
            None,
        ),
        "guidance": (
            _scale(
                "--guidance",
                "Deprecated: --autoguidance, --label-guidance or --cluster-guidance, "
                "whichever the run has (autoguidance first).",
                hidden=True,  # still taken, with a warning; not shown in --help
            ),
            None,
        ),
        "precision": (_option(str, "--precision", PRECISION_HELP), _DEFAULTS.precision),
        "batch_size": (_option(int, "--batch-size", "Samples per forward pass.", min=1), _DEFAULTS.batch_size),
        "cuda_graphs": (
            _option(bool, "--cuda-graphs", "CUDA: replay each network call from a CUDA graph."),
            _DEFAULTS.cuda_graphs,
        ),
    }


SAMPLING_OPTIONS = sampling_flags(SAMPLE_DEFAULTS)  # those of `sample` and `eval`


@dataclasses.dataclass(frozen=True)
class SamplingRequest:
    """The sampling flags of a command: the settings, and the deprecated ``--guidance`` if given,
    which only a loaded run can place (:meth:`for_run`)."""

    settings: SamplingConfig
    legacy_guidance: float | None = None

    def for_run(self, kinds: GuidanceKinds) -> SamplingConfig:
        """The settings, with ``--guidance`` read as the first kind the run can be guided with."""
        if self.legacy_guidance is None:
            return self.settings
        kind = next((k for k in ("auto", "labels", "clusters") if getattr(kinds, k)), "auto")
        flag = Guidance.FLAGS[kind]
        say(f"warning: --guidance is deprecated and will be removed in the next release; for this run it means {flag}")
        given = self.settings.guidance
        if getattr(given, kind) is not None:
            return self.settings
        return dataclasses.replace(self.settings, guidance=dataclasses.replace(given, **{kind: self.legacy_guidance}))


@dataclasses.dataclass(frozen=True)
class RunChoice:
    """Which run a command reads and where: its --run, --artifacts-dir, --device and --data-dir."""

    run: str | None
    artifacts_dir: Path
    device: str
    data_dir: Path = DEFAULT_DATA_DIR

    def folder(self) -> Path:
        """The run's folder (:func:`~mnist_diffusion.runs.store.resolve_run`)."""
        from ..runs.store import resolve_run

        return resolve_run(self.run, self.artifacts_dir)

    def load(self):
        """The run, loaded on the device (:func:`~mnist_diffusion.runs.loader.load_run`)."""
        from ..runs.loader import load_run
        from ..runtime import setup_device

        return load_run(self.folder(), setup_device(self.device))


def run_command(
    name: str | None = None,
    *,
    sampling: SamplingDefaults | None = None,
    without: tuple[str, ...] = (),
    data_dir: bool = False,
    device: str = "auto",
):
    """Register a command that reads a run: its own flags, with --run first, then --data-dir (with
    ``data_dir``), --device (default ``device``) and --artifacts-dir, which it receives as ``where:
    RunChoice``. With ``sampling``, also every sampling flag, its help telling what a flag left out
    means for this command; it receives them as ``sampling: SamplingRequest``, checked (a bad value is
    one ``Error:`` line before any work). ``without`` leaves out the flags of fields the command sets
    itself (the sampler is then the defaults' one; the others keep SamplingConfig's)."""
    options = {} if sampling is None else sampling_flags(sampling)
    unknown = set(without) - set(options)
    if unknown:
        raise ValueError(f"no sampling flags named {sorted(unknown)}")
    options = {key: spec for key, spec in options.items() if key not in without}
    shared = {
        "data_dir": (DataDir, DEFAULT_DATA_DIR),
        "device": (Device, device),
        "artifacts_dir": (ArtifactsDir, DEFAULT_ARTIFACTS_DIR),
    }
    if not data_dir:
        del shared["data_dir"]

    def register(command):
        title = name or command.__name__.replace("_", "-")
        hints = typing.get_type_hints(command, include_extras=True)
        own = [
            p.replace(annotation=hints[p.name], kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(command).parameters.values()
            if p.name not in ("where", "sampling")
        ]

        def param(key: str, annotation, default) -> inspect.Parameter:
            return inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

        added = [param(key, annotation, default) for key, (annotation, default) in {**shared, **options}.items()]

        @functools.wraps(command)
        def wrapper(**kwargs):
            where = RunChoice(kwargs.pop("run"), **{key: kwargs.pop(key) for key in shared})
            if sampling is None:
                return command(**kwargs, where=where)
            flags = {"sampler": sampling.sampler, **{key: kwargs.pop(key) for key in options}}
            guidance = Guidance(
                auto=flags.pop("autoguidance", None),
                labels=flags.pop("label_guidance", None),
                clusters=flags.pop("cluster_guidance", None),
                max_sigma=flags.pop("guidance_max_sigma", None),
            )
            legacy = flags.pop("guidance", None)
            settings = checked(SamplingConfig(**flags, guidance=guidance).check)
            if settings.sampler not in sampling.samplers:
                raise UserError(
                    f"--sampler must be {' or '.join(sampling.samplers)} for {title} (got {settings.sampler!r})"
                )
            return command(**kwargs, where=where, sampling=SamplingRequest(settings, legacy))

        params = [param("run", RunArg, None), *own, *added]
        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # Typer reads the signature above, not the command's own
        return app.command(name)(user_errors(wrapper))

    return register


def int_list(text: str, flag: str, *, low: int = 0, high: int | None = None, example: str = "0,5,9") -> list[int]:
    """A flag's comma-separated integers, such as ``example``, each at least ``low`` (and at most
    ``high``), in the order given and without repeats; anything else is a one-line UserError naming ``flag``."""
    items = [item.strip() for item in text.split(",")]
    try:
        values = [int(item) for item in items]
    except ValueError:
        values = []
    if not values or any(v < low or (high is not None and v > high) for v in values):
        within = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise UserError(f"{flag} takes comma-separated whole numbers {within}, such as {example} (got {text!r})")
    return list(dict.fromkeys(values))
