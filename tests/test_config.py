"""The configs: SamplingConfig's defaults and how it resolves against a run, Guidance's rules,
build_config's flags, and the CLI's sampling options as a mirror of SamplingConfig's fields."""

from __future__ import annotations

import dataclasses

import pytest

from mnist_diffusion.cli.options import SAMPLING_OPTIONS
from mnist_diffusion.config import (
    DEFAULT_STEPS,
    PRESETS,
    Guidance,
    GuidanceKinds,
    SamplingConfig,
    build_config,
)

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
    [("sampler", "euler", "--sampler"), ("steps", 0, "--steps"), ("spacing", 0.05, "--spacing"),
     ("eta", 1.5, "--eta"), ("seed", -1, "--seed"), ("batch_size", 0, "--batch-size"),
     ("precision", "fp8", "--precision"), ("guidance", Guidance(auto=-1.0), "--autoguidance"),
     ("guidance", Guidance(clusters=float("nan")), "--cluster-guidance"),
     ("guidance", Guidance(labels=21.0), "--label-guidance")],
)  # fmt: skip
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


def test_every_sampling_field_has_a_flag_with_its_default():
    fields = {f.name for f in dataclasses.fields(SamplingConfig)}
    flags = set(SAMPLING_OPTIONS) - {"autoguidance", "label_guidance", "cluster_guidance", "guidance"}
    assert flags == fields - {"guidance"}  # the guidance field is the three scales (and the deprecated one)
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
