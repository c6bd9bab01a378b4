"""How samples are drawn from a run (:class:`SamplingConfig`, with its :class:`Guidance`), and
the editing commands' settings."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

from ..seeds import check_seed
from .memory import activation_bytes, check_memory
from .run import INT_LIMIT, MAX_TIMESTEPS, ModelConfig, Precision, _check_choice


@dataclass(frozen=True)
class GuidanceKinds:
    """What a run can be guided with: the weak model of autoguidance (its ``guide.safetensors``),
    digit labels (a ``--conditional`` run), pixel clusters (a ``--clusters`` run)."""

    auto: bool = False
    labels: bool = False
    clusters: bool = False


@dataclass(frozen=True)
class Guidance:
    """The guidance scales of a sampling, each named for what it guides with; 1 turns one off,
    None takes its default where the run can be guided that way.

    With all three, a guided network evaluation is
    out = D_guide(x|c) + auto (D(x|c) - D_guide(x|c)) + (labels or clusters - 1) (D(x|c) - D(x|null)).
    """

    auto: float | None = None  # autoguidance by the run's early EMA weights (Karras et al. 2024, eq. 2)
    labels: float | None = None  # classifier-free on digit labels (Ho & Salimans 2022, eq. 6)
    clusters: float | None = None  # classifier-free on the pixel clusters (Hu et al. 2023)
    # Guide only at noise levels sigma = sqrt((1 - alpha_bar) / alpha_bar) up to this; above it a step
    # is one plain network call (Kynkäänniemi et al. 2024: guidance at high noise costs diversity).
    # None: at every step.
    max_sigma: float | None = None

    # Each kind's default: the guidance sweeps and class-conditional results in docs/RESULTS.md.
    DEFAULTS: ClassVar[dict[str, float]] = {"auto": 2.0, "labels": 2.0, "clusters": 1.6}
    FLAGS: ClassVar[dict[str, str]] = {
        "auto": "--autoguidance",
        "labels": "--label-guidance",
        "clusters": "--cluster-guidance",
    }
    MAX: ClassVar[float] = 20.0  # the largest scale accepted
    MAX_SIGMA_RANGE: ClassVar[tuple[float, float]] = (0.01, 1e6)  # the --guidance-max-sigma accepted

    def check(self) -> Guidance:
        """Raise ValueError naming the flag of a scale outside [0, MAX]; return self."""
        for kind, value in self.scales().items():
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= self.MAX):
                raise ValueError(f"{self.FLAGS[kind]} must be between 0 and {self.MAX:g} (got {value})")
        low, high = self.MAX_SIGMA_RANGE
        if self.max_sigma is not None and not (math.isfinite(self.max_sigma) and low <= self.max_sigma <= high):
            raise ValueError(f"--guidance-max-sigma must be between {low:g} and {high:g} (got {self.max_sigma})")
        return self

    def scales(self) -> dict[str, float | None]:
        return {"auto": self.auto, "labels": self.labels, "clusters": self.clusters}

    def resolve(self, kinds: GuidanceKinds, run: str = "this run") -> Guidance:
        """Every scale made concrete for a run that can be guided by ``kinds``: its default where
        not given, 1 (off) for a kind the run lacks; asking a run for a kind it lacks is a
        ValueError."""
        self.check()
        out = {}
        for kind, value in self.scales().items():
            if getattr(kinds, kind):
                out[kind] = self.DEFAULTS[kind] if value is None else value
            elif value is not None and value != 1.0:
                raise ValueError(f"{self.FLAGS[kind]} needs {_NEEDS[kind]}; {run} has none")
            else:
                out[kind] = 1.0
        return Guidance(**out, max_sigma=self.max_sigma)

    def describe(self) -> str:
        """The guidance of a resolved sampling in words, such as "autoguidance 3 + cluster guidance
        1.2", "label guidance 2.5" or "autoguidance 2 at sigma <= 5"; "" when there is none."""
        names = {"auto": "autoguidance", "labels": "label guidance", "clusters": "cluster guidance"}
        text = " + ".join(f"{names[k]} {v:g}" for k, v in self.scales().items() if v is not None and v != 1.0)
        return f"{text} at sigma <= {self.max_sigma:g}" if text and self.max_sigma is not None else text

    def guides_at(self, sigma: float) -> bool:
        """Whether a step at noise level ``sigma`` is guided (``max_sigma``)."""
        return self.max_sigma is None or sigma <= self.max_sigma


_NEEDS = {
    "auto": "a run with a guide (guide.safetensors: the EMA weights from early in training)",
    "labels": "a run trained on digit labels (train --conditional)",
    "clusters": "a run trained on pixel clusters (train --clusters K)",
}

SamplerName = Literal["ddpm", "ddim", "dpmpp-2m", "dpmpp-2m-sde"]
DEFAULT_STEPS: dict[str, int] = {"ddim": 50, "dpmpp-2m": 20, "dpmpp-2m-sde": 20}  # model evaluations
SPACING_RANGE = (0.1, 4.0)  # the spacing powers accepted


@dataclass(frozen=True)
class SamplingConfig:
    """How samples are drawn from a run: by `sample`, `eval`, the end-of-run grid and the
    benchmarks. ``resolve`` makes every field concrete for one run; the resolved value is what
    ``eval.json`` and ``--save-tensor`` record."""

    sampler: SamplerName = "dpmpp-2m-sde"  # SDE-DPM-Solver++(2M): docs/RESULTS.md, the sampler tables
    steps: int | None = None  # model evaluations; None: DEFAULT_STEPS (at most T); DDPM always takes all T
    spacing: float | None = None  # timestep spacing power (samplers.spaced_timesteps); None: DEFAULT_SPACING
    eta: float = 0.0  # DDIM's noise: 0 deterministic, 1 like DDPM
    seed: int = 0  # seeds the noise (and a clustered run's clusters): same seed and settings, same images
    guidance: Guidance = field(default_factory=Guidance)  # the guidance scales
    precision: Precision = "auto"  # as TrainConfig.precision (runtime.autocast_dtype)
    batch_size: int = 500  # samples per network call
    cuda_graphs: bool = False  # CUDA: each network call replayed from a CUDA graph, one per batch shape

    DEFAULT_SPACING: ClassVar[float] = 0.4  # from the spacing sweep in docs/RESULTS.md

    def check(self) -> SamplingConfig:
        """Raise ValueError with a one-line reason for a field out of range; return self."""
        _check_choice(self.sampler, SamplerName, "--sampler")
        _check_choice(self.precision, Precision, "--precision")
        low, high = SPACING_RANGE
        checks = [
            (
                self.steps is None or 1 <= self.steps <= MAX_TIMESTEPS,
                f"--steps must be between 1 and {MAX_TIMESTEPS:,} (got {self.steps})",
            ),
            (
                self.spacing is None or low <= self.spacing <= high,
                f"--spacing must be between {low:g} and {high:g} (got {self.spacing})",
            ),
            (0.0 <= self.eta <= 1.0, f"--eta must be between 0 and 1 (got {self.eta})"),
            (1 <= self.batch_size < INT_LIMIT, f"--batch-size must be between 1 and 2^63 - 1 (got {self.batch_size})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        check_seed(self.seed)
        self.guidance.check()
        return self

    def check_batch(self, model: ModelConfig, n: int) -> SamplingConfig:
        """Raise ValueError if a batch of ``n`` samples (at most ``batch_size``) of the network
        ``model`` describes would not fit in memory (:func:`activation_bytes`); return self."""
        batch = min(self.batch_size, n)
        check_memory(batch * activation_bytes(model), f"--batch-size {batch}", "use a smaller --batch-size")
        return self

    def resolve(self, num_timesteps: int, kinds: GuidanceKinds, run: str = "this run") -> SamplingConfig:
        """The settings used for a run with ``num_timesteps`` steps that can be guided by ``kinds``:
        the default steps (at most T) and spacing where not given, none for DDPM, and every
        guidance scale concrete. Steps beyond T are a ValueError."""
        self.check()
        if self.steps is not None and self.steps > num_timesteps:
            raise ValueError(f"--steps must be between 1 and the run's {num_timesteps} timesteps (got {self.steps})")
        spacing = None if self.sampler == "ddpm" else self.DEFAULT_SPACING if self.spacing is None else self.spacing
        steps = self._steps(num_timesteps)
        return dataclasses.replace(self, steps=steps, spacing=spacing, guidance=self.guidance.resolve(kinds, run))

    def _steps(self, num_timesteps: int) -> int | None:
        if self.sampler == "ddpm":
            return None
        return self.steps or min(DEFAULT_STEPS[self.sampler], num_timesteps)

    def evaluations(self, num_timesteps: int) -> int:
        """Network evaluations (per guided branch) of one sampling with these settings: T for DDPM."""
        return self._steps(num_timesteps) or num_timesteps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- editing

# `inpaint`: RePaint's resampling (Lugmayr et al. 2022), the paper's j and r. On a Gaussian with a
# known answer (tests/test_editing.py), 50 steps with j = 5, r = 5 take the completions' mean from
# 0.65 conditional standard deviations off (no resampling) to 0.14, for 5 times the evaluations.
INPAINT_JUMPS = 5  # after each j steps down, go back j steps with the forward process
INPAINT_RESAMPLE = 5  # walk each block of j steps r times in all; 1: no resampling
# With clusters matched to the visible pixels (data/clusters.py; `inpaint`'s default on a clustered
# run where MNIST's training digits are at hand), 20 steps and one walk: on 1,000 test digits per
# mask, 8 to 18 points more completions read as the true digit than 50 steps with r = 5 unmatched,
# in about a thirteenth of the time (docs/RESULTS.md, Editing).
INPAINT_MATCHED_STEPS = 20
INPAINT_MATCHED_RESAMPLE = 1
# Inpainting and inversion take evenly spaced steps unless --spacing is given: sampling's 0.4 leaves
# a long last step, which a known region and an inversion take badly (on that Gaussian, 20 times
# the inversion error at 50 steps, a completion's mean a standard deviation off).
EDIT_SPACING = 1.0
SDEDIT_STRENGTH = 0.6  # `sample --init`: noise the drawing to t = strength * T (Meng et al. 2022)
INPAINT_MAX_EVALUATIONS = 1_000_000  # the most network evaluations RePaint's walk may take (steps times about r)
INTERPOLATE_FRAMES = 8  # `interpolate`: pictures from one end to the other, both ends included
INVERT_STEPS = (20, 50, 100)  # `invert`: the step counts whose reconstruction errors are compared


@dataclass(frozen=True)
class SamplingDefaults:
    """What a command's sampling flags mean when left out, as its --help shows them: the commands
    (sampling/editing.py for the editing ones) take their values from here."""

    sampler: SamplerName = SamplingConfig.sampler  # the sampler without --sampler
    samplers: tuple[SamplerName, ...] = get_args(SamplerName)  # the samplers it takes
    spacing: float = SamplingConfig.DEFAULT_SPACING  # the spacing power without --spacing
    digit_spacing: float | None = None  # `interpolate`: the spacing with a real digit at an end
    cluster_guidance: float = Guidance.DEFAULTS["clusters"]  # a clustered run's scale without --cluster-guidance
    matched_steps: int | None = None  # `inpaint`: the steps without --steps when clusters are matched

    def steps(self) -> dict[str, int]:
        """Each sampler's model evaluations without --steps (at most the run's T; DDPM takes all T)."""
        return {name: DEFAULT_STEPS[name] for name in self.samplers if name in DEFAULT_STEPS}


SAMPLE_DEFAULTS = SamplingDefaults()  # `sample`, `eval`, the end-of-run grid
# `inpaint`: ancestral DDIM (eta 1), evenly spaced; no cluster guidance, so the visible part decides the digit
INPAINT_DEFAULTS = SamplingDefaults(
    sampler="ddim", samplers=("ddim",), spacing=EDIT_SPACING, cluster_guidance=1.0, matched_steps=INPAINT_MATCHED_STEPS
)
INVERT_DEFAULTS = SamplingDefaults(sampler="ddim", samplers=("ddim",), spacing=EDIT_SPACING)  # DDIM, eta 0
# `interpolate`: a deterministic sampler; between seeds as `sample` spaces its steps, between real digits evenly
INTERPOLATE_DEFAULTS = SamplingDefaults(sampler="ddim", samplers=("ddim", "dpmpp-2m"), digit_spacing=EDIT_SPACING)


def inpaint_resample(resample: int | None, matched: bool) -> int:
    """RePaint's r for `inpaint`: ``resample``, or when it is None, INPAINT_MATCHED_RESAMPLE with
    matched clusters (one walk: the cluster already agrees with the visible pixels) and
    INPAINT_RESAMPLE without."""
    if resample is not None:
        return resample
    return INPAINT_MATCHED_RESAMPLE if matched else INPAINT_RESAMPLE
