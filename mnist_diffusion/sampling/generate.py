"""Samples from a loaded run: the labels a request asks for, and :func:`generate`, the one place
the network is called to draw images (by `sample`, `eval`, the end-of-run grid and the benchmarks).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ..config import SamplingConfig, check_image_count
from ..data.clusters import draw_clusters
from ..diffusion import x0_to_unit
from ..diffusion.guidance import Denoiser
from ..diffusion.samplers import Start, StepCallback, sample
from ..errors import UserError
from ..runs.loader import LoadedRun
from ..runtime import autocast_dtype, sampling_memory_format
from .graphed import GraphedForward


def resolve_for(run: LoadedRun, sampling: SamplingConfig) -> SamplingConfig:
    """``sampling`` made concrete for ``run`` (:meth:`SamplingConfig.resolve`); a setting the run
    cannot take is a one-line UserError."""
    try:
        return sampling.resolve(run.schedule.num_timesteps, run.guidance_kinds, f"run {run.path.name}")
    except ValueError as e:
        raise UserError(str(e)) from None


def count_for(n: int, flag: str, *, scale: int = 1, low: int = 1, each: int = 1) -> int:
    """``n`` digits (``flag``), if at least ``low`` and they fit in memory
    (:func:`~mnist_diffusion.config.check_image_count`); else a one-line UserError."""
    try:
        return check_image_count(n, flag, scale=scale, low=low, each=each)
    except ValueError as e:
        raise UserError(str(e)) from None


def check_batch(run: LoadedRun, settings: SamplingConfig, n: int) -> None:
    """A one-line UserError if a batch of ``n`` samples (at most ``settings.batch_size``) of the
    run's network would not fit in memory (:meth:`SamplingConfig.check_batch`)."""
    try:
        settings.check_batch(run.cfg.model, n)
    except ValueError as e:
        raise UserError(str(e)) from None


def balanced_labels(n: int) -> torch.Tensor:
    """The labels a conditional run is scored with (eval, train --eval-every): ``i % 10``, so
    every digit comes equally often in any n that is a multiple of 10. (A picture of a
    conditional run draws a row per digit instead: :func:`parse_labels`.)"""
    return torch.arange(n) % 10


def parse_labels(digit: int | None, labels: str | None, n: int, conditional: bool) -> torch.Tensor | None:
    """The class labels for ``n`` samples from ``--digit`` / ``--labels`` (comma-separated,
    repeated to length n); a conditional run with neither gets rows of 0..9."""
    if (digit is not None or labels) and not conditional:
        raise UserError("--digit/--labels need a class-conditional run (train it with --conditional)")
    if not conditional:
        return None
    if digit is not None and labels:
        raise UserError("give --digit or --labels, not both")
    if digit is not None:
        values = [digit]
    elif labels:
        try:
            values = [int(v) for v in labels.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--labels must be comma-separated digits 0-9 (got {labels!r})") from None
    else:
        values = list(range(10))
    if not values or any(not 0 <= v <= 9 for v in values):
        raise UserError("labels must be digits 0-9")
    if labels or digit is not None:
        seq = [values[i % len(values)] for i in range(n)]
    else:  # ceil(n / 10) of each digit, in order: a row per digit (see default_conditional_nrow)
        per_digit = -(-n // 10)
        seq = [min(i // per_digit, 9) for i in range(n)]
    return torch.tensor(seq, dtype=torch.long)


def default_conditional_nrow(n: int) -> int:
    """Tiles per row of a conditional run's default grid: one row per digit 0-9, or for n <= 10
    (one of each digit at most) a single row 0, 1, ..., n-1."""
    per_digit = -(-n // 10)
    return per_digit if per_digit > 1 else n


# Where a batch of samples begins instead of pure noise: called with (index of the batch's first
# sample, batch size, the sampling's generator), it returns the batch's start (SDEdit's noised drawing).
BatchStart = Callable[[int, int, torch.Generator], Start]


Networks = tuple[nn.Module, nn.Module | None]  # a run's network and its guide, as a sampling runs them


def networks_for(run: LoadedRun, settings: SamplingConfig) -> Networks:
    """The run's network and guide as resolved ``settings`` run them: replayed from CUDA graphs
    with ``cuda_graphs`` (a one-line UserError off CUDA); on the CPU, copies with channels-last
    weights (:func:`~mnist_diffusion.runtime.sampling_memory_format`; the run's own stay as they
    are). Make them once per sampling: the graphs are kept for every batch shape they see."""
    model, guide = run.model, run.guide
    layout = sampling_memory_format(run.device)
    if layout != torch.contiguous_format:
        model, guide = _laid_out(model, layout), guide and _laid_out(guide, layout)
    if settings.cuda_graphs:
        if run.device.type != "cuda":
            raise UserError(f"--cuda-graphs needs a CUDA GPU (this run is on {run.device.type})")
        model, guide = GraphedForward(model), guide and GraphedForward(guide)
    return model, guide


def _laid_out(net: nn.Module, layout: torch.memory_format) -> nn.Module:
    """A copy of ``net`` with its 4-d weights in ``layout``."""
    return copy.deepcopy(net).to(memory_format=layout)


def denoiser_for(run: LoadedRun, settings: SamplingConfig, labels: torch.Tensor | None, networks: Networks) -> Denoiser:
    """The run's ``networks`` (:func:`networks_for`) as the samplers see them, guided as resolved
    ``settings`` say, for a batch with ``labels`` ([B] on the run's device, or None)."""
    model, guide = networks
    dtype = autocast_dtype(settings.precision, run.device)
    return Denoiser(
        model, run.schedule, run.cfg.diffusion.prediction, labels, settings.guidance, guide=guide, autocast=dtype
    )


def generate(
    run: LoadedRun,
    n: int,
    sampling: SamplingConfig = SamplingConfig(),
    *,
    labels: torch.Tensor | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    start: BatchStart | None = None,
) -> torch.Tensor:
    """``n`` samples as [n x 1 x 28 x 28] in [0, 1] on the CPU, drawn with ``sampling`` (resolved
    for the run here if it is not yet). Batches of ``sampling.batch_size`` are drawn in order from
    one generator seeded with ``sampling.seed``, so the same seed and settings give the same images.

    :param labels: [n] digits for a conditional run (see :func:`parse_labels`); a run trained on
        pixel clusters draws each sample's cluster from their training frequencies instead (first,
        from the same generator).
    :param callback: called after every step of the first batch (:data:`StepCallback`).
    :param start: where each batch begins instead of pure noise (:data:`BatchStart`).
    """
    count_for(n, "number of samples")
    settings = resolve_for(run, sampling)
    check_batch(run, settings, n)
    device = run.device
    networks = networks_for(run, settings)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    if run.clustered and labels is None:
        labels = draw_clusters(run.cluster_counts.to(device), n, generator)
    out = []
    for first in range(0, n, settings.batch_size):  # the callback sees the first batch only
        b = min(settings.batch_size, n - first)
        batch_labels = labels[first : first + b].to(device) if labels is not None else None
        begin = start(first, b, generator) if start is not None else None
        denoiser = denoiser_for(run, settings, batch_labels, networks)
        x = sample(
            denoiser,
            (b, run.cfg.model.in_channels, 28, 28),
            settings,
            generator=generator,
            device=device,
            progress=progress,
            callback=callback if first == 0 else None,
            start=begin,
        )
        out.append(x0_to_unit(x).cpu())
    return torch.cat(out)
