"""Every default of the tool, in one place: typed dataclasses with a comment per field.

- :class:`RunConfig` (model, diffusion process, training) is what a run is trained with; a run's
  ``config.json`` is :meth:`RunConfig.to_dict`, and :meth:`RunConfig.from_dict` rebuilds it.
  Presets are named instances; :func:`build_config` applies the flags a user gave.
- :class:`SamplingConfig` (sampler, steps, spacing, guidance, ...) is how samples are drawn from
  a run, by every command that draws them.

The CLI maps its flags onto these fields. Nothing here reads files or touches torch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

from .seeds import check_seed

Arch = Literal["unet", "seed"]
ScheduleName = Literal["linear", "cosine", "sigmoid"]
Prediction = Literal["eps", "v"]
LossWeighting = Literal["none", "min-snr"]
LRSchedule = Literal["constant", "cosine"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

INT_LIMIT = 2**63  # every integer of a config fits in 64 bits (torch seeds and sizes)
MAX_TIMESTEPS = 100_000  # the most diffusion steps T a run may have: 100 times the default 1000
MAX_STEPS = 2**40  # the most optimizer steps a plan may have (--steps, --max-steps, --warmup): no run is longer
MAX_EPOCHS = 1_000_000  # the most passes over the training images a plan may have
MNIST_TRAIN_IMAGES = 60_000  # the most pixel clusters a run may learn: one per training image
MEMORY_FALLBACK = 16 * 2**30  # bytes of memory assumed where the system does not say how much it has
DEFAULT_DATA_DIR = Path("data")  # where MNIST lives: data/MNIST/raw/*-ubyte, as torchvision lays it out
DEFAULT_ARTIFACTS_DIR = Path("artifacts")  # where runs live: artifacts/runs/NNNNN-NAME, artifacts/latest
SAMPLE_EVERY = 500  # train --sample-every: steps between progress grids (0: none); under 1% of a CPU run
EVAL_EVERY = 0  # train --eval-every: steps between FIDs while training; off: one costs ~330 steps on a CPU
EVAL_SAMPLES = 1000  # train --eval-samples: samples each of those FIDs scores


@dataclass(frozen=True)
class ModelConfig:
    arch: Arch = "unet"  # "unet" (time-conditioned) or "seed" (the original, no time input)
    in_channels: int = 1  # MNIST is greyscale
    channels: int = 16  # base width; level i has channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 6)  # widths at 28x28, 14x14, 7x7
    num_res_blocks: int = 1  # residual blocks per resolution on the way down (and up)
    attention: bool = True  # self-attention in the 7x7 middle
    dropout: float = 0.0  # dropout inside residual blocks
    num_classes: int = 0  # label embedding (+ a null class): 10 digits, or TrainConfig.clusters; 0: none


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: ScheduleName = "cosine"  # beta schedule, see diffusion/schedule.py
    timesteps: int = 1000  # T, the number of forward-process steps
    beta_start: float = 1e-4  # linear schedule only: beta_1
    beta_end: float = 0.02  # linear schedule only: beta_T
    prediction: Prediction = "v"  # what the network predicts: v (Salimans & Ho 2022) or the noise eps
    loss_weighting: LossWeighting = "min-snr"  # "min-snr": Hang et al. 2023, gamma = 5; or "none"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5  # passes over the 60,000 training images
    batch_size: int = 64  # images per optimizer step (per process under torchrun)
    lr: float = 2e-3  # peak AdamW learning rate
    warmup_steps: int = 200  # linear learning-rate warm-up from 0
    lr_schedule: LRSchedule = "cosine"  # after warm-up: constant, or cosine decay to 10% of lr
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    ema_decay: float = 0.999  # EMA of the weights, used for sampling
    ema_warmup: bool = True  # EMA decay min(ema_decay, (1 + step) / (10 + step)) early on
    label_dropout: float = 0.1  # conditional models: share of labels replaced by "null" (CFG)
    guide_at: float = 0.2  # unconditional: keep the EMA weights at this share of training as the autoguidance guide
    clusters: int = 0  # unconditional: learn this many k-means clusters of the pixels as labels (data/clusters.py)
    seed: int = 0  # seeds weights, batch order and noise
    steps: int = 0  # the plan: optimizer steps in all (0: epochs x steps per epoch); the lr and guide follow it
    max_steps: int = 0  # stop after this many optimizer steps in total (0: no limit)
    precision: Precision = "auto"  # the network's autocast: "auto" (bf16 where native, else fp32), fp32, bf16, fp16
    step_on_device: bool = False  # the step as device ops on counter-hashed noise (training/graphs.py): --cuda-graphs


@dataclass(frozen=True)
class RunConfig:
    preset: str = "default"  # the preset this config started from
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild a config from :meth:`to_dict` output, refusing unknown or ill-typed fields."""
        if not isinstance(data, dict):
            raise ValueError("config must be a JSON object")
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config field(s) {reprlib.repr(sorted(unknown))}")
        preset = data.get("preset", "custom")
        if not (isinstance(preset, str) and 0 < len(preset) <= 64 and preset.isprintable()):
            raise ValueError(f"preset must be a name of 1-64 printable characters (got {reprlib.repr(preset)})")
        parts = {}
        for name, sub in (("model", ModelConfig), ("diffusion", DiffusionConfig), ("train", TrainConfig)):
            raw = data.get(name, {})
            if not isinstance(raw, dict):
                raise ValueError(f"config section {name!r} must be an object")
            parts[name] = _build(sub, raw)
        return validate(cls(preset=preset, **parts))


def _is_int(value: Any) -> bool:
    """An integer that fits in 64 bits; JSON's true and false are not integers."""
    return isinstance(value, int) and not isinstance(value, bool) and -INT_LIMIT <= value < INT_LIMIT


def _build(cls: type, raw: dict[str, Any]) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ValueError(f"unknown config field(s) {reprlib.repr(sorted(unknown))} in {cls.__name__}")
    values = {}
    for name, value in raw.items():
        default = getattr(cls(), name)
        where = f"{cls.__name__}.{name}"
        if isinstance(default, tuple):  # of ints
            if not (isinstance(value, list | tuple) and all(_is_int(v) for v in value)):
                raise ValueError(f"{where} must be a list of integers (got {reprlib.repr(value)})")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{where} must be true or false (got {reprlib.repr(value)})")
        elif isinstance(default, int):
            if not _is_int(value):
                raise ValueError(f"{where} must be an integer of at most 64 bits (got {reprlib.repr(value)})")
        elif isinstance(default, float):
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) < INT_LIMIT:
                value = float(value)
            if not (isinstance(value, float) and math.isfinite(value)):
                raise ValueError(f"{where} must be a finite number (got {reprlib.repr(value)})")
        elif type(default) is not type(value):
            raise ValueError(f"{where} must be a {type(default).__name__} (got {reprlib.repr(value)})")
        values[name] = value
    return cls(**values)


def _check_choice(value: str, literal: Any, what: str) -> None:
    if value not in get_args(literal):
        raise ValueError(f"{what} must be one of {', '.join(get_args(literal))} (got {value!r})")


def _numbers(cfg: RunConfig):
    """(where, value) of every number of a config: each int (and each entry of channel_mult), each float."""
    for section in (cfg.model, cfg.diffusion, cfg.train):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, int | float) and not isinstance(v, bool):
                    yield f.name, v


def validate(cfg: RunConfig) -> RunConfig:
    """Raise ValueError with a one-line reason if any field is out of range; return cfg."""
    m, d, t = cfg.model, cfg.diffusion, cfg.train
    for where, value in _numbers(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number (got {value})")
        if isinstance(value, int) and not _is_int(value):
            raise ValueError(f"{where} must be an integer of at most 64 bits (got {reprlib.repr(value)})")
    _check_choice(m.arch, Arch, "model arch")
    _check_choice(d.schedule, ScheduleName, "schedule")
    _check_choice(d.prediction, Prediction, "prediction")
    _check_choice(d.loss_weighting, LossWeighting, "loss weighting")
    _check_choice(t.lr_schedule, LRSchedule, "lr schedule")
    _check_choice(t.precision, Precision, "precision")
    checks = [
        (m.channels >= 8 and m.channels % 8 == 0, "channels must be a positive multiple of 8"),
        (
            len(m.channel_mult) == 3 and all(x >= 1 for x in m.channel_mult),
            "channel_mult needs 3 positive entries (28, 14, 7)",
        ),
        (m.num_res_blocks >= 1, "num_res_blocks must be at least 1"),
        (0.0 <= m.dropout < 1.0, "dropout must be in [0, 1)"),
        (t.clusters >= 0, "clusters must not be negative"),
        (t.clusters <= MNIST_TRAIN_IMAGES, f"clusters must be at most {MNIST_TRAIN_IMAGES:,}, one per training image"),
        (m.arch == "unet" or not m.num_classes, "the seed network takes no labels or clusters (use the unet)"),
        (
            m.num_classes == t.clusters if t.clusters else m.num_classes in (0, 10),
            "num_classes must be 0 (unconditional), 10 (digits) or the number of clusters",
        ),
        (d.timesteps >= 2, "timesteps must be at least 2"),
        (d.timesteps <= MAX_TIMESTEPS, f"timesteps must be at most {MAX_TIMESTEPS:,}"),
        (0.0 < d.beta_start < d.beta_end < 1.0, "need 0 < beta_start < beta_end < 1"),
        (t.epochs >= 0, "epochs must not be negative"),
        (t.epochs <= MAX_EPOCHS, f"epochs must be at most {MAX_EPOCHS:,}"),
        (t.batch_size >= 1, "batch size must be at least 1"),
        (t.lr > 0, "learning rate must be positive"),
        (t.warmup_steps >= 0, "warmup steps must not be negative"),
        (t.weight_decay >= 0, "weight decay must not be negative"),
        (t.grad_clip >= 0, "grad clip must not be negative"),
        (0.0 <= t.ema_decay < 1.0, "EMA decay must be in [0, 1)"),
        (0.0 <= t.label_dropout < 1.0, "label dropout must be in [0, 1)"),
        (0.0 <= t.guide_at < 1.0, "guide_at must be in [0, 1)"),
        (t.steps >= 0, "steps must not be negative"),
        (t.max_steps >= 0, "max steps must not be negative"),
        (max(t.steps, t.max_steps, t.warmup_steps) <= MAX_STEPS,
         f"steps, max steps and warmup steps must be at most 2^40 = {MAX_STEPS:,}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    check_seed(t.seed, "seed")
    return cfg


# ----------------------------------------------------------------------------- memory
# Estimates made before anything is allocated, so that a size no machine here can hold is a
# one-line error at once rather than a failure minutes into the work.

IMAGE_BYTES = 4 * 28 * 28  # one digit as float32, (1, 28, 28)


def memory_bytes() -> int:
    """This machine's physical memory in bytes (os.sysconf), or MEMORY_FALLBACK where it cannot say."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return MEMORY_FALLBACK
    return pages * page_size if pages > 0 and page_size > 0 else MEMORY_FALLBACK


def check_memory(need: int, what: str, hint: str) -> None:
    """A ValueError saying ``what`` would need ``need`` bytes, and ``hint``, if that is more than
    this machine's memory (:func:`memory_bytes`)."""
    have = memory_bytes()
    if need > have:
        raise ValueError(f"{what} would need about {need / 2**30:.3g} GiB of memory, more than this machine's "
                         f"{have / 2**30:.3g} GiB; {hint}")  # fmt: skip


def image_bytes(scale: int = 1) -> int:
    """The memory one digit takes while a command holds it: its float32 tensor a few times over
    (the batches, their concatenation, a grid's tiles) and its pixels in a picture at ``scale``
    (a byte each, a few copies)."""
    return 6 * IMAGE_BYTES + 4 * (28 + 2) ** 2 * scale**2


def check_image_count(n: int, flag: str, *, scale: int = 1, low: int = 1, each: int = 1) -> int:
    """``n``, a number of digits a command makes (``flag``; ``each`` digits per unit of it), if it
    is at least ``low`` and they fit in memory (:func:`image_bytes` at the picture's ``scale``);
    else a ValueError."""
    if n < low:
        raise ValueError(f"{flag} must be at least {low} (got {n})")
    what = f"{flag} {n}" + (f" ({n * each:,} digits)" if each > 1 else "")
    check_memory(n * each * image_bytes(scale), what, f"use a smaller {flag}")
    return n


def _widths(m: ModelConfig) -> list[int]:
    return [m.channels * k for k in m.channel_mult]  # at 28x28, 14x14, 7x7


def parameter_count(m: ModelConfig) -> int:
    """The number of parameters of the network ``m`` describes (nets/unet.py), from its shape alone."""
    def conv(c_in: int, c_out: int, k: int) -> int:
        return k * k * c_in * c_out + c_out

    ch, c = m.channels, m.in_channels
    if m.arch == "seed":  # three convolutions down, two transposed ones up, one out
        return (conv(c, ch, 3) + conv(ch, 2 * ch, 3) + conv(2 * ch, 4 * ch, 3) + conv(4 * ch, 2 * ch, 4)
                + conv(2 * ch, ch, 4) + conv(ch, c, 3))  # fmt: skip
    emb = 4 * ch

    def res(c_in: int, c_out: int) -> int:  # two GroupNorms, two 3x3 convolutions, the embedding's shift, a skip
        return 2 * c_in + conv(c_in, c_out, 3) + emb * c_out + c_out + 2 * c_out + conv(c_out, c_out, 3) + (
            conv(c_in, c_out, 1) if c_in != c_out else 0)  # fmt: skip

    widths = _widths(m)
    total = (ch * emb + emb) + (emb * emb + emb) + ((m.num_classes + 1) * emb if m.num_classes else 0)
    total += conv(c, widths[0], 3)
    cur, skips = widths[0], []
    for level, width in enumerate(widths):
        for _ in range(m.num_res_blocks):
            total, cur = total + res(cur, width), width
        skips.append(cur)
        total += conv(cur, cur, 3) if level < len(widths) - 1 else 0
    total += 2 * res(cur, cur) + (2 * cur + conv(cur, 3 * cur, 1) + conv(cur, cur, 1) if m.attention else 0)
    for level in reversed(range(len(widths))):
        for i in range(m.num_res_blocks):
            total, cur = total + res(cur + skips[level] if i == 0 else cur, widths[level]), widths[level]
    return total + 2 * cur + conv(cur, c, 3)


def activation_bytes(m: ModelConfig) -> int:
    """About the memory one image's feature maps take in a training step of the network ``m``
    describes (float32, all kept for the backward pass); a sampling step holds less."""
    sizes = [28 * 28, 14 * 14, 7 * 7]
    if m.arch == "seed":
        ch = m.channels
        maps = sizes[0] * ch + sizes[1] * 2 * ch + sizes[2] * 4 * ch + sizes[1] * 2 * ch + sizes[0] * ch
        return 4 * (3 * maps + 2 * sizes[0] * m.in_channels)  # each layer's input, output and activation

    def res(c_in: int, c_out: int, hw: int) -> int:  # its input twice (norm, activation), 8 maps of its width
        return hw * (2 * c_in + 8 * c_out)

    widths = _widths(m)
    total = sizes[0] * (m.in_channels + widths[0])
    cur, skips = widths[0], []
    for level, width in enumerate(widths):
        for _ in range(m.num_res_blocks):
            total, cur = total + res(cur, width, sizes[level]), width
        skips.append(cur)
        total += cur * sizes[level + 1] if level < len(widths) - 1 else 0
    total += 2 * res(cur, cur, sizes[-1]) + (sizes[-1] * (6 * cur + 4 * sizes[-1]) if m.attention else 0)
    for level in reversed(range(len(widths))):
        total += sizes[level] * (cur + (cur + skips[level]))  # the upsampled map and its concatenation
        for i in range(m.num_res_blocks):
            total, cur = total + res(cur + skips[level] if i == 0 else cur, widths[level], sizes[level]), widths[level]
    return 4 * (total + 3 * sizes[0] * cur)


def check_training_memory(cfg: RunConfig) -> RunConfig:
    """``cfg`` if training it fits in this machine's memory: the parameters six times over (the
    weights, their gradients, AdamW's two moments, the EMA and the guide) and one batch of
    activations; else a ValueError naming the flags that size it."""
    m, t = cfg.model, cfg.train
    params = parameter_count(m)
    need = 6 * 4 * params + t.batch_size * activation_bytes(m)
    check_memory(need, f"training a network of {params:,} parameters in batches of {t.batch_size:,}",
                 "use a smaller --channels, --channel-mult or --batch-size")  # fmt: skip
    return cfg


# The original single script, faithfully: no time conditioning, linear 1e-4..0.02, T=300,
# Adam at 1e-4 with no warm-up, decay or clipping, batch 128, 5 epochs, MSE on the noise.
SEED = RunConfig(
    preset="seed",
    model=ModelConfig(arch="seed", channels=64, attention=False),
    diffusion=DiffusionConfig(
        schedule="linear", timesteps=300, beta_start=1e-4, beta_end=0.02, prediction="eps", loss_weighting="none"
    ),
    train=TrainConfig(
        batch_size=128, lr=1e-4, warmup_steps=0, lr_schedule="constant", grad_clip=0.0, ema_decay=0.0, ema_warmup=False
    ),
)

# The best quality 5 epochs buy on a 2-core CPU with bf16 units in 15 minutes (docs/RESULTS.md):
# an 880k-parameter UNet (16/32/96 channels), cosine schedule, v-prediction with min-SNR
# weighting, batch 64, AdamW 2e-3 with warm-up and cosine decay, EMA, bf16 where the CPU has
# bf16 units (what pays for the 96 channels at 7x7), 40 k-means clusters of the pixels as
# self-labels (no digit labels), and a guide for autoguidance.
DEFAULT_CLUSTERS = 40
DEFAULT = RunConfig(
    preset="default",
    model=ModelConfig(num_classes=DEFAULT_CLUSTERS),
    train=TrainConfig(clusters=DEFAULT_CLUSTERS),
)

# A GPU-sized model for the best quality.
LARGE = RunConfig(
    preset="large",
    model=ModelConfig(channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention=True, dropout=0.1),
    train=TrainConfig(epochs=30, batch_size=128, lr=2e-4, warmup_steps=500, ema_decay=0.9995),
)

PRESETS: dict[str, RunConfig] = {"default": DEFAULT, "seed": SEED, "large": LARGE}


def build_config(preset: str, **overrides: Any) -> RunConfig:
    """The preset named ``preset`` with every override that is not None applied to the field of
    that name (in whichever section has it), validated, and small enough to train here
    (:func:`check_training_memory`); a bad value is a ValueError."""
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
    cfg = PRESETS[preset]
    sections = {"model": cfg.model, "diffusion": cfg.diffusion, "train": cfg.train}
    for key, value in overrides.items():
        if value is None:
            continue
        section = next(s for s, obj in sections.items() if key in {f.name for f in dataclasses.fields(obj)})
        sections[section] = dataclasses.replace(sections[section], **{key: value})
    return check_training_memory(validate(RunConfig(preset=preset, **sections)))


# ----------------------------------------------------------------------------- sampling


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

    # Each kind's default: the guidance sweeps and class-conditional results in docs/RESULTS.md.
    DEFAULTS: ClassVar[dict[str, float]] = {"auto": 2.0, "labels": 2.0, "clusters": 1.6}
    FLAGS: ClassVar[dict[str, str]] = {"auto": "--autoguidance", "labels": "--label-guidance",
                                       "clusters": "--cluster-guidance"}  # fmt: skip
    MAX: ClassVar[float] = 20.0  # the largest scale accepted

    def check(self) -> Guidance:
        """Raise ValueError naming the flag of a scale outside [0, MAX]; return self."""
        for kind, value in self.scales().items():
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= self.MAX):
                raise ValueError(f"{self.FLAGS[kind]} must be between 0 and {self.MAX:g} (got {value})")
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
        return Guidance(**out)

    @property
    def label_scale(self) -> float:
        """The classifier-free scale of a resolved guidance: on the digits or on the clusters (a
        run has one kind of label at most)."""
        return self.labels if self.labels != 1.0 else self.clusters

    def describe(self) -> str:
        """The guidance of a resolved sampling in words, such as "autoguidance 3 + cluster guidance
        1.2" or "label guidance 2.5"; "" when there is none."""
        names = {"auto": "autoguidance", "labels": "label guidance", "clusters": "cluster guidance"}
        return " + ".join(f"{names[k]} {v:g}" for k, v in self.scales().items() if v is not None and v != 1.0)


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
            (self.steps is None or 1 <= self.steps <= MAX_TIMESTEPS,
             f"--steps must be between 1 and {MAX_TIMESTEPS:,} (got {self.steps})"),
            (self.spacing is None or low <= self.spacing <= high,
             f"--spacing must be between {low:g} and {high:g} (got {self.spacing})"),
            (0.0 <= self.eta <= 1.0, f"--eta must be between 0 and 1 (got {self.eta})"),
            (1 <= self.batch_size < INT_LIMIT, f"--batch-size must be between 1 and 2^63 - 1 (got {self.batch_size})"),
        ]  # fmt: skip
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
# Inpainting and inversion take evenly spaced steps unless --spacing is given: sampling's 0.4 leaves
# a long last step, which a known region and an inversion take badly (on that Gaussian, 20 times
# the inversion error at 50 steps, a completion's mean a standard deviation off).
EDIT_SPACING = 1.0
SDEDIT_STRENGTH = 0.6  # `sample --init`: noise the drawing to t = strength * T (Meng et al. 2022)
INPAINT_MAX_EVALUATIONS = 1_000_000  # the most network evaluations RePaint's walk may take (steps times about r)
INTERPOLATE_FRAMES = 8  # `interpolate`: pictures from one end to the other, both ends included
INVERT_STEPS = (20, 50, 100)  # `invert`: the step counts whose reconstruction errors are compared
