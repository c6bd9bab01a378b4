"""The configs: SamplingConfig's defaults and how it resolves against a run, Guidance's rules,
build_config's flags, and the CLI's sampling options as a mirror of SamplingConfig's fields."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from conftest import tiny_config

from mnist_diffusion.cli.options import SAMPLING_OPTIONS
from mnist_diffusion.config import (
    DEFAULT_STEPS,
    MAX_EPOCHS,
    MAX_STEPS,
    MAX_TIMESTEPS,
    PRESETS,
    Guidance,
    GuidanceKinds,
    ModelConfig,
    RunConfig,
    SamplingConfig,
    activation_bytes,
    build_config,
    check_image_count,
    check_training_memory,
    image_bytes,
    memory_bytes,
    parameter_count,
    validate,
)
from mnist_diffusion.seeds import SEED_MAX, check_seed, derive_seed

NOTHING = GuidanceKinds()
DEFAULT_PRESET = GuidanceKinds(auto=True, clusters=True)  # a guide and pixel clusters
CONDITIONAL = GuidanceKinds(labels=True)


def test_resolve_fills_the_defaults_per_sampler():
    assert SamplingConfig().resolve(1000, NOTHING).steps == DEFAULT_STEPS["dpmpp-2m-sde"]
    assert SamplingConfig().resolve(1000, NOTHING).spacing == SamplingConfig.DEFAULT_SPACING
    ddim = SamplingConfig(sampler="ddim").resolve(1000, NOTHING)
    assert ddim.steps == DEFAULT_STEPS["ddim"] and ddim.spacing == SamplingConfig.DEFAULT_SPACING
    ddpm = SamplingConfig(sampler="ddpm", steps=None).resolve(1000, NOTHING)
    assert ddpm.steps is None and ddpm.spacing is None and ddpm.evaluations(1000) == 1000
    assert SamplingConfig(steps=7, spacing=1.0).resolve(1000, NOTHING).steps == 7
    assert SamplingConfig().resolve(10, NOTHING).steps == 10  # the default is capped at a short run's T
    with pytest.raises(ValueError, match="--steps must be between 1 and the run's 10 timesteps"):
        SamplingConfig(steps=11).resolve(10, NOTHING)
    resolved = SamplingConfig().resolve(1000, DEFAULT_PRESET)
    assert resolved.resolve(1000, DEFAULT_PRESET) == resolved  # resolving twice changes nothing


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("sampler", "euler", "--sampler"),
        ("steps", 0, "--steps"),
        ("spacing", 0.05, "--spacing"),
        ("eta", 1.5, "--eta"),
        ("seed", -1, "--seed"),
        ("batch_size", 0, "--batch-size"),
        ("precision", "fp8", "--precision"),
        ("guidance", Guidance(auto=-1.0), "--autoguidance"),
        ("guidance", Guidance(clusters=float("nan")), "--cluster-guidance"),
        ("guidance", Guidance(labels=21.0), "--label-guidance"),
    ],
)
def test_check_names_the_flag_of_a_bad_value(field, value, needle):
    with pytest.raises(ValueError, match=needle):
        dataclasses.replace(SamplingConfig(), **{field: value}).check()


def test_each_guidance_kind_has_one_default_and_only_applies_where_the_run_has_it():
    assert Guidance().resolve(DEFAULT_PRESET) == Guidance(auto=2.0, labels=1.0, clusters=1.6)
    assert Guidance().resolve(CONDITIONAL) == Guidance(auto=1.0, labels=2.0, clusters=1.0)
    assert Guidance().resolve(GuidanceKinds(clusters=True)) == Guidance(auto=1.0, labels=1.0, clusters=1.6)
    assert Guidance().resolve(NOTHING) == Guidance(auto=1.0, labels=1.0, clusters=1.0)
    assert Guidance(auto=3.0, clusters=1.0).resolve(DEFAULT_PRESET) == Guidance(auto=3.0, labels=1.0, clusters=1.0)
    assert Guidance(labels=1.0).resolve(NOTHING).labels == 1.0  # asking for "off" is always fine
    refusals = {
        Guidance(auto=2.0): "--autoguidance needs a run with a guide",
        Guidance(labels=2.0): "--label-guidance needs a run trained on digit labels",
        Guidance(clusters=2.0): "--cluster-guidance needs a run trained on pixel clusters",
    }
    for given, needle in refusals.items():
        with pytest.raises(ValueError, match=needle):
            given.resolve(NOTHING, "run 00003-x")


def test_describe_names_what_guides():
    assert Guidance(auto=2.0, labels=1.0, clusters=1.6).describe() == "autoguidance 2 + cluster guidance 1.6"
    assert Guidance(auto=1.0, labels=2.5, clusters=1.0).describe() == "label guidance 2.5"
    assert Guidance(auto=1.0, labels=1.0, clusters=1.0).describe() == ""
    limited = Guidance(auto=2.0, labels=1.0, clusters=1.0, max_sigma=5.0)
    assert limited.describe() == "autoguidance 2 at sigma <= 5"
    assert Guidance(auto=1.0, labels=1.0, clusters=1.0, max_sigma=5.0).describe() == ""


def test_max_sigma_is_kept_by_resolve_and_checked():
    assert Guidance(max_sigma=5.0).resolve(DEFAULT_PRESET) == Guidance(
        auto=2.0, labels=1.0, clusters=1.6, max_sigma=5.0
    )
    assert Guidance().resolve(DEFAULT_PRESET).max_sigma is None  # every step guided unless asked
    assert Guidance(max_sigma=5.0).guides_at(5.0) and not Guidance(max_sigma=5.0).guides_at(5.01)
    assert Guidance().guides_at(1e9)
    for bad in (0.0, -1.0, float("nan"), float("inf"), 2e6):
        with pytest.raises(ValueError, match="--guidance-max-sigma must be between 0.01 and 1e"):
            Guidance(max_sigma=bad).check()


def test_every_sampling_field_has_a_flag_with_its_default():
    fields = {f.name for f in dataclasses.fields(SamplingConfig)}
    guidance = {"autoguidance", "label_guidance", "cluster_guidance", "guidance_max_sigma", "guidance"}
    flags = set(SAMPLING_OPTIONS) - guidance
    assert flags == fields - {"guidance"}  # the guidance field: three scales, their limit (and the deprecated flag)
    for name in flags:
        assert SAMPLING_OPTIONS[name][1] == getattr(SamplingConfig(), name), name


def test_build_config_applies_the_flags_given():
    cfg = build_config("default", lr=1e-3, timesteps=50, channels=None)
    assert cfg.train.lr == 1e-3 and cfg.diffusion.timesteps == 50
    assert cfg.model == PRESETS["default"].model  # channels=None: the preset's
    assert build_config("seed").model.arch == "seed"
    with pytest.raises(ValueError, match="--preset must be one of"):
        build_config("huge")
    with pytest.raises(ValueError, match="epochs must not be negative"):
        build_config("default", epochs=-1)


# ----------------------------------------------------------------------------- every number bounded


def test_every_float_of_a_config_must_be_finite():
    for section, name in [
        ("train", "lr"),
        ("train", "weight_decay"),
        ("train", "grad_clip"),
        ("train", "ema_decay"),
        ("train", "ema_gamma"),
        ("train", "adam_beta2"),
        ("train", "label_dropout"),
        ("train", "guide_at"),
        ("model", "dropout"),
        ("diffusion", "beta_start"),
        ("diffusion", "beta_end"),
        ("diffusion", "noise_mean"),
        ("diffusion", "noise_std"),
    ]:
        for value in (math.inf, -math.inf, math.nan):
            with pytest.raises(ValueError, match=f"{name} must be a finite number"):
                build_config("default", **{name: value})
            bad = dataclasses.replace(
                PRESETS["default"],
                **{section: dataclasses.replace(getattr(PRESETS["default"], section), **{name: value})},
            )
            with pytest.raises(ValueError, match="finite"):
                validate(bad)


@pytest.mark.parametrize(
    "flags,needle",
    [
        ({"timesteps": MAX_TIMESTEPS + 1}, "timesteps must be at most 100,000"),
        ({"epochs": MAX_EPOCHS + 1}, "epochs must be at most"),
        ({"steps": MAX_STEPS + 1}, "at most 2\\^40"),
        ({"max_steps": 2**63}, "max_steps must be an integer of at most 64 bits"),
        ({"clusters": 60_001, "num_classes": 60_001}, "clusters must be at most 60,000"),
        ({"seed": 2**63}, "seed must be an integer of at most 64 bits"),
        ({"seed": -1}, "seed must be between 0"),
        ({"noise_levels": "gamma"}, "noise levels must be one of uniform, log-normal"),
        ({"noise_std": 0.0}, "noise_std must be in"),
        ({"noise_mean": 21.0}, "noise_mean"),
        ({"ema_gamma": -1.0}, "EMA gamma must be in"),
        ({"adam_beta2": 1.0}, "adam_beta2 must be in"),
        ({"channel_mult": (1, 2, 2**64)}, "channel_mult must be an integer of at most 64 bits"),
    ],
)
def test_every_count_of_a_config_has_a_cap(flags, needle):
    with pytest.raises(ValueError, match=needle):
        build_config("default", **flags)


def test_a_config_at_its_caps_is_written_and_read_back():
    cfg = build_config(
        "default", seed=SEED_MAX, timesteps=MAX_TIMESTEPS, steps=MAX_STEPS, max_steps=1, epochs=MAX_EPOCHS
    )
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_the_parameter_count_is_the_networks():
    from mnist_diffusion.nets.unet import build_model

    variants = [
        *PRESETS.values(),
        tiny_config(),
        dataclasses.replace(
            PRESETS["default"],
            model=ModelConfig(
                channels=24, channel_mult=(2, 3, 1), num_res_blocks=3, attention=False, num_classes=10, in_channels=2
            ),
        ),
    ]
    for cfg in variants:
        assert parameter_count(cfg.model) == sum(p.numel() for p in build_model(cfg.model).parameters()), cfg


def test_the_activation_estimate_is_near_what_a_training_step_keeps():
    from mnist_diffusion.nets.unet import build_model

    def kept_bytes(model, b: int) -> int:
        """Bytes of the tensors autograd keeps for the backward pass of a batch of b (each storage once)."""
        kept: dict[int, int] = {}

        def pack(t):
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randn(b, 1, 28, 28), torch.randint(0, 50, (b,)))
        return sum(kept.values())

    for cfg in [*PRESETS.values(), tiny_config()]:
        assert 0.7 < activation_bytes(cfg.model) / (kept_bytes(build_model(cfg.model), 2) / 2) < 1.5, cfg.preset


def test_a_network_or_batch_too_large_for_memory_is_refused_before_training():
    for flags in (
        {"channels": 8_000_000},
        {"channel_mult": (1, 2, 2**40)},
        {"batch_size": 10**9},
        {"clusters": 60_000, "num_classes": 60_000, "channels": 2**20},
    ):
        with pytest.raises(ValueError, match="would need about .* GiB of memory, more than this machine's"):
            build_config("default", **flags)
    for preset in PRESETS:
        check_training_memory(build_config(preset))
    assert memory_bytes() > 2**30


def test_sampling_numbers_are_bounded():
    for settings, needle in [
        (SamplingConfig(seed=2**63), "--seed must be between 0 and 2\\^63 - 1"),
        (SamplingConfig(steps=MAX_TIMESTEPS + 1), "--steps must be between 1 and 100,000"),
        (SamplingConfig(eta=math.nan), "--eta"),
        (SamplingConfig(spacing=math.inf), "--spacing"),
        (SamplingConfig(batch_size=2**63), "--batch-size"),
    ]:
        with pytest.raises(ValueError, match=needle):
            settings.check()
    SamplingConfig(seed=SEED_MAX).check()
    model = PRESETS["default"].model
    huge = SamplingConfig(batch_size=10**12)
    assert huge.check_batch(model, 8) is huge  # a batch is never larger than the samples asked for
    with pytest.raises(ValueError, match="--batch-size 1000000000000 would need about"):
        huge.check_batch(model, 10**12)


def test_image_counts_are_checked_against_memory_before_anything_is_made():
    assert check_image_count(64, "-n", scale=16) == 64
    with pytest.raises(ValueError, match="-n must be at least 1"):
        check_image_count(0, "-n")
    with pytest.raises(ValueError, match="--frames must be at least 2"):
        check_image_count(1, "--frames", low=2)
    with pytest.raises(ValueError, match="-n 1000000000000 would need about .* use a smaller -n"):
        check_image_count(10**12, "-n")
    n = memory_bytes() // image_bytes(16) + 1  # fits at scale 1, not at 16
    check_image_count(n, "-n", scale=1)
    with pytest.raises(ValueError, match="would need"):
        check_image_count(n, "-n", scale=16)


def test_derived_seeds_are_unchanged_where_they_fitted_and_reduced_where_they_overflowed():
    for seed, step, rank in [(0, 0, 0), (12345, 678, 3), (9_223_372_036_854, 2**40, 7)]:
        assert derive_seed(seed * 1_000_003, step * 1_009, rank) == seed * 1_000_003 + step * 1_009 + rank
    assert derive_seed(2**64 - 1) == 2**64 - 1 and derive_seed(2**64) == 0
    assert derive_seed(SEED_MAX * 1_000_003, 5 * 1_009, 1) == (SEED_MAX * 1_000_003 + 5 * 1_009 + 1) % 2**64
    for value in (derive_seed(SEED_MAX * 1_000_003, 2**40 * 1_009, 3), derive_seed(SEED_MAX * 7_919, MAX_EPOCHS)):
        assert torch.Generator().manual_seed(value).initial_seed() == value
    assert check_seed(SEED_MAX) == SEED_MAX
    for bad in (-1, 2**63, 2**64):
        with pytest.raises(ValueError, match="--seed must be between 0 and 2\\^63 - 1"):
            check_seed(bad)
