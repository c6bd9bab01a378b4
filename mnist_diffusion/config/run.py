"""What a run is trained with: :class:`RunConfig` (model, diffusion process, training), typed
dataclasses with a comment per field, checked by :func:`validate`; the presets, named instances;
and :func:`build_config`, which applies the flags a user gave. A run's ``config.json`` is
:meth:`RunConfig.to_dict`, and :meth:`RunConfig.from_dict` rebuilds it."""

from __future__ import annotations

import dataclasses
import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ..seeds import check_seed
from .memory import check_training_memory

Arch = Literal["unet", "seed"]
ScheduleName = Literal["linear", "cosine", "sigmoid"]
Prediction = Literal["eps", "v"]
LossWeighting = Literal["none", "min-snr"]
NoiseLevels = Literal["uniform", "log-normal"]
LRSchedule = Literal["constant", "cosine"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]

INT_LIMIT = 2**63  # every integer of a config fits in 64 bits (torch seeds and sizes)
MAX_TIMESTEPS = 100_000  # the most diffusion steps T a run may have: 100 times the default 1000
MAX_STEPS = 2**40  # the most optimizer steps a plan may have (--steps, --max-steps, --warmup): no run is longer
MAX_EPOCHS = 1_000_000  # the most passes over the training images a plan may have
MNIST_TRAIN_IMAGES = 60_000  # the most pixel clusters a run may learn: one per training image
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
    channel_mult: tuple[int, ...] = (1, 2, 4)  # widths at 28x28, 14x14, 7x7
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
    noise_levels: NoiseLevels = "uniform"  # training steps t: uniform in 0..T-1, or "log-normal" in sigma (EDM)
    noise_mean: float = -1.2  # log-normal only: mean of ln sigma (Karras et al. 2022, P_mean)
    noise_std: float = 1.2  # log-normal only: standard deviation of ln sigma (P_std)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5  # passes over the 60,000 training images
    batch_size: int = 64  # images per optimizer step (per process under torchrun)
    lr: float = 2e-3  # peak AdamW learning rate
    warmup_steps: int = 200  # linear learning-rate warm-up from 0
    lr_schedule: LRSchedule = "cosine"  # after warm-up: constant, or cosine decay to 10% of lr
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_beta2: float = 0.999  # AdamW's second-moment decay (beta1 stays 0.9)
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    ema_decay: float = 0.999  # EMA of the weights, used for sampling
    ema_warmup: bool = True  # EMA decay min(ema_decay, (1 + n) / (2 + ema_gamma + n)) at update n
    ema_gamma: float = 8.0  # the warm-up's power-function EMA (Karras et al. 2024): larger averages fewer steps
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
    _check_choice(d.noise_levels, NoiseLevels, "noise levels")
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
        (abs(d.noise_mean) <= 20, "noise_mean (ln sigma) must be in [-20, 20]"),
        (0 < d.noise_std <= 10, "noise_std must be in (0, 10]"),
        (d.timesteps <= MAX_TIMESTEPS, f"timesteps must be at most {MAX_TIMESTEPS:,}"),
        (0.0 < d.beta_start < d.beta_end < 1.0, "need 0 < beta_start < beta_end < 1"),
        (t.epochs >= 0, "epochs must not be negative"),
        (t.epochs <= MAX_EPOCHS, f"epochs must be at most {MAX_EPOCHS:,}"),
        (t.batch_size >= 1, "batch size must be at least 1"),
        (t.lr > 0, "learning rate must be positive"),
        (t.warmup_steps >= 0, "warmup steps must not be negative"),
        (t.weight_decay >= 0, "weight decay must not be negative"),
        (0.0 < t.adam_beta2 < 1.0, "adam_beta2 must be in (0, 1)"),
        (t.grad_clip >= 0, "grad clip must not be negative"),
        (0.0 <= t.ema_decay < 1.0, "EMA decay must be in [0, 1)"),
        (0.0 <= t.ema_gamma <= 1e6, "EMA gamma must be in [0, 1,000,000]"),
        (0.0 <= t.label_dropout < 1.0, "label dropout must be in [0, 1)"),
        (0.0 <= t.guide_at < 1.0, "guide_at must be in [0, 1)"),
        (t.steps >= 0, "steps must not be negative"),
        (t.max_steps >= 0, "max steps must not be negative"),
        (
            max(t.steps, t.max_steps, t.warmup_steps) <= MAX_STEPS,
            f"steps, max steps and warmup steps must be at most 2^40 = {MAX_STEPS:,}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    check_seed(t.seed, "seed")
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

# The best digits per CPU-minute measured so far (docs/RESULTS.md, speedrun): a 450k-parameter
# UNet (16/32/64 channels: at equal time it beat 16/32/96 from 10 minutes to 35, and samples at
# 0.69x the cost), cosine schedule, v-prediction with min-SNR weighting, batch 64, AdamW 2e-3 with
# warm-up and cosine decay, EMA, bf16 where the CPU has bf16 units, 40 k-means clusters of the
# pixels as self-labels (no digit labels), and a guide for autoguidance: its EMA weights at 40% of
# training, which scored better than 20% from 10-minute runs to 5 epochs.
DEFAULT_CLUSTERS = 40
DEFAULT_GUIDE_AT = 0.4
DEFAULT = RunConfig(
    preset="default",
    model=ModelConfig(num_classes=DEFAULT_CLUSTERS),
    train=TrainConfig(clusters=DEFAULT_CLUSTERS, guide_at=DEFAULT_GUIDE_AT),
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
