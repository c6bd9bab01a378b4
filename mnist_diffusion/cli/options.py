"""Options shared by several commands, each defined once: where runs and data live, the device,
and every sampling setting (:func:`sampling_options`), whose defaults and checks live in
:class:`~mnist_diffusion.config.SamplingConfig`."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional, get_args

import typer

from ..config import DEFAULT_STEPS, SPACING_RANGE, Guidance, GuidanceKinds, SamplerName, SamplingConfig
from ..errors import UserError
from ..seeds import SEED_MAX
from .app import checked, say

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
PRECISION_HELP = (
    "The network in auto (bf16 on CPUs with AVX512-BF16/AMX and NVIDIA GPUs from Ampere on, else "
    "fp32), fp32, bf16, or fp16 (CUDA)."
)

_DEFAULTS = SamplingConfig()
PANEL = "Sampling"  # the --help section of the sampling options
_STEPS = ", ".join(f"{name} {steps}" for name, steps in DEFAULT_STEPS.items())


def _option(kind, flag: str, help: str, **limits):
    """A sampling flag's type: ``kind`` with its Typer option, in the "Sampling" part of --help."""
    return Annotated[kind, typer.Option(flag, help=help, rich_help_panel=PANEL, **limits)]


def _scale(flag: str, help: str, **more):
    return _option(Optional[float], flag, help, min=0.0, max=Guidance.MAX, **more)


# name -> (type with its Typer option, default): the flags of SamplingConfig's fields
SAMPLING_OPTIONS = {
    "sampler": (_option(str, "--sampler", f"{', '.join(get_args(SamplerName))}."), _DEFAULTS.sampler),
    "steps": (
        _option(Optional[int], "--steps", f"Model evaluations (default: {_STEPS}; ddpm always takes all T).", min=1),
        None,
    ),
    "spacing": (
        _option(
            Optional[float],
            "--spacing",
            "Timestep spacing power p, t_i = T (1 - i/n)^p - 1: 1 even, "
            f"below 1 more steps at high noise (default {SamplingConfig.DEFAULT_SPACING:g}).",
            min=SPACING_RANGE[0],
            max=SPACING_RANGE[1],
        ),
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
            f"(runs with a guide; default {Guidance.DEFAULTS['auto']:g}, 1: off).",
        ),
        None,
    ),
    "label_guidance": (
        _scale(
            "--label-guidance",
            "Classifier-free guidance on the digit (--conditional runs; "
            f"default {Guidance.DEFAULTS['labels']:g}, 1: off).",
        ),
        None,
    ),
    "cluster_guidance": (
        _scale(
            "--cluster-guidance",
            "Classifier-free guidance on the pixel cluster (--clusters "
            f"runs, the default preset; default {Guidance.DEFAULTS['clusters']:g}, 1: off).",
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


def sampling_options(command=None, *, without: tuple[str, ...] = ()):
    """Give a Typer command every sampling flag; it receives them as ``sampling: SamplingRequest``,
    checked (a bad value is one ``Error:`` line before any work). ``@sampling_options(without=
    ("sampler", "eta"))`` leaves out the flags of fields a command sets itself (they keep
    SamplingConfig's defaults), so that it can declare its own flag of that name."""
    if command is None:
        return functools.partial(sampling_options, without=without)
    unknown = set(without) - set(SAMPLING_OPTIONS)
    if unknown:
        raise ValueError(f"no sampling flags named {sorted(unknown)}")
    options = {name: spec for name, spec in SAMPLING_OPTIONS.items() if name not in without}
    hints = typing.get_type_hints(command, include_extras=True)
    own = [
        p.replace(annotation=hints[p.name])
        for p in inspect.signature(command).parameters.values()
        if p.name != "sampling"
    ]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, (annotation, default) in options.items()
    ]

    @functools.wraps(command)
    def wrapper(**kwargs):
        flags = {name: kwargs.pop(name) for name in options}
        guidance = Guidance(
            auto=flags.pop("autoguidance", None),
            labels=flags.pop("label_guidance", None),
            clusters=flags.pop("cluster_guidance", None),
        )
        legacy = flags.pop("guidance", None)
        settings = checked(SamplingConfig(**flags, guidance=guidance).check)
        return command(**kwargs, sampling=SamplingRequest(settings, legacy))

    params = own + added
    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    del wrapper.__wrapped__  # Typer reads the signature above, not the command's own
    return wrapper


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
