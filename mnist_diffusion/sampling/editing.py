"""Editing digits with a trained run: inpainting (RePaint), interpolation, DDIM inversion and
SDEdit. The cores of `mnistdiff inpaint`, `interpolate`, `invert` and `sample --init`, and the
Python API of the same names (``from mnist_diffusion import inpaint``).

Each function takes a :class:`LoadedRun` and how to sample: a :class:`SamplingConfig`, its fields
as keywords (``steps=20, seed=3``), or both. Images are [N x 1 x 28 x 28] in [0, 1] (one digit
may be [28 x 28]) and come back on the CPU; nothing is printed unless ``progress=True``. The same
seed and settings give the same tensors.

The labels follow `sample`: ``digit`` on a conditional run (without it, the unconditional model),
a cluster drawn from the seed's generator on a clustered run (first, as :func:`generate` does).
Inpainting is the exception on a clustered run: the visible pixels, not a drawn cluster, decide
which digit a completion becomes, so it runs the network without a cluster (the null label) and
without cluster guidance, unless a cluster-guidance scale is asked for (docs/RESULTS.md: a drawn
cluster fights the visible part and completes fewer digits as their true label). With a
:class:`~mnist_diffusion.data.clusters.ClusterMatcher` (``--match-clusters``), each completion's
cluster is drawn from the clusters of the training digits that agree with the visible pixels, and
guided towards (cluster guidance 1.6 unless a scale is given).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from ..config import (
    INPAINT_DEFAULTS,
    INPAINT_JUMPS,
    INTERPOLATE_DEFAULTS,
    INTERPOLATE_FRAMES,
    INVERT_DEFAULTS,
    SAMPLE_DEFAULTS,
    SDEDIT_STRENGTH,
    SamplingConfig,
    inpaint_resample,
)
from ..data.clusters import ClusterMatcher, draw_clusters
from ..diffusion import x0_to_unit
from ..diffusion.editing import check_repaint, ddim_invert, repaint, slerp
from ..diffusion.samplers import Start, StepCallback, sample, spaced_timesteps
from ..errors import UserError
from ..pictures.grids import check_images
from ..runs.loader import LoadedRun
from ..seeds import derive_seed
from .generate import check_batch, count_for, denoiser_for, generate, networks_for, resolve_for

FORWARD_STREAM = 0x9E3779B97F4A7C15  # RePaint's forward-process noise: a generator seeded with seed ^ this
Endpoint = int | torch.Tensor  # an end of an interpolation: a seed (0 to 2^64 - 1), or a digit [1 x 28 x 28] in [0, 1]


def settings_of(sampling: SamplingConfig | None, overrides: dict[str, Any]) -> SamplingConfig:
    """``sampling`` (default: SamplingConfig()) with the fields named in ``overrides`` replaced."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SamplingConfig)}
    if unknown:
        raise TypeError(f"unknown sampling setting(s) {sorted(unknown)}: see SamplingConfig's fields")
    return dataclasses.replace(sampling or SamplingConfig(), **overrides)


def as_images(images: torch.Tensor, what: str = "the images") -> torch.Tensor:
    """[N x 1 x 28 x 28], [N x 28 x 28] or one [28 x 28] digit, floats in [0, 1] or uint8, as
    float [N x 1 x 28 x 28] in [0, 1] on the CPU; anything else is a one-line UserError."""
    x = torch.as_tensor(images).detach().cpu()
    return check_images(x[None] if x.ndim == 2 else x, what)


def edit_labels(run: LoadedRun, n: int, digit: int | None, generator: torch.Generator) -> torch.Tensor | None:
    """The labels [n] of ``n`` edits on the run's device (see the module's docstring), or None."""
    if digit is not None:
        if not run.conditional:
            raise UserError("--digit needs a class-conditional run (train it with --conditional)")
        if not 0 <= digit <= 9:
            raise UserError(f"--digit must be a digit 0-9 (got {digit})")
        return torch.full((n,), digit, dtype=torch.long, device=run.device)
    if run.clustered:
        return draw_clusters(run.cluster_counts.to(run.device), n, generator)
    return None


def _batches(n: int, size: int) -> Iterator[slice]:
    for first in range(0, n, size):
        yield slice(first, min(first + size, n))


def _pick(labels: torch.Tensor | None, batch: slice) -> torch.Tensor | None:
    return labels[batch] if labels is not None else None


# ----------------------------------------------------------------------------- inpainting


def inpaint_settings(
    run: LoadedRun, sampling: SamplingConfig | None = None, *, matched: bool = False, **overrides: Any
) -> SamplingConfig:
    """How :func:`inpaint` samples, resolved for ``run`` (INPAINT_DEFAULTS): ancestral DDIM (eta 1)
    on the steps given (default: DDIM's, or its ``matched_steps`` if ``matched``), evenly spaced
    unless a spacing is given; cluster guidance off unless its scale is given (the module's
    docstring says why), or ``matched`` (clusters drawn by a ClusterMatcher: `sample`'s scale)."""
    s, d = settings_of(sampling, overrides), INPAINT_DEFAULTS
    spacing = d.spacing if s.spacing is None else s.spacing
    steps = min(d.matched_steps, run.schedule.num_timesteps) if matched and s.steps is None else s.steps
    unset = SAMPLE_DEFAULTS.cluster_guidance if matched else d.cluster_guidance
    guidance = dataclasses.replace(s.guidance, clusters=unset if s.guidance.clusters is None else s.guidance.clusters)
    chosen = dataclasses.replace(s, sampler="ddim", eta=1.0, steps=steps, spacing=spacing, guidance=guidance)
    return resolve_for(run, chosen)


def inpaint(
    run: LoadedRun,
    images: torch.Tensor,
    missing: torch.Tensor,
    sampling: SamplingConfig | None = None,
    *,
    n: int = 1,
    digit: int | None = None,
    jumps: int = INPAINT_JUMPS,
    resample: int | None = None,
    match: ClusterMatcher | None = None,
    progress: bool = False,
    **overrides: Any,
) -> torch.Tensor:
    """Fill the ``missing`` pixels of each image ``n`` times with RePaint (Lugmayr et al. 2022,
    :func:`~mnist_diffusion.diffusion.editing.repaint`): after each ``jumps`` steps, go back as
    many with the forward process and redo them, ``resample`` times in all (:func:`inpaint_resample`).
    ``match`` (a clustered run's :meth:`LoadedRun.cluster_matcher`): each completion's cluster drawn
    from those of the training digits that agree with the image's visible pixels.

    :param images: [N x 1 x 28 x 28] in [0, 1] (or one [28 x 28] digit).
    :param missing: bool, broadcastable to [N x 1 x 28 x 28] (a [28 x 28] mask for all): True
        where a pixel is missing.
    :return: [N x n x 1 x 28 x 28] in [0, 1], equal to ``images`` where known.
    """
    x = as_images(images)
    count_for(n, "-n", each=len(x))
    try:
        missing = torch.as_tensor(missing).cpu().to(torch.bool).broadcast_to(x.shape)
    except RuntimeError:
        raise UserError(f"a mask of shape {tuple(missing.shape)} does not fit images of {tuple(x.shape)}") from None
    if match is not None and (not run.clustered or match.k != run.cfg.train.clusters):
        raise UserError(f"a matcher of {match.k} clusters does not fit run {run.path.name}")
    settings = inpaint_settings(run, sampling, matched=match is not None, **overrides)
    resample = inpaint_resample(resample, match is not None)
    try:
        check_repaint(settings.steps, jumps, resample)
    except ValueError as e:
        raise UserError(str(e)) from None
    check_batch(run, settings, len(x) * n)
    device = run.device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    forward = torch.Generator(device=device).manual_seed(derive_seed(settings.seed ^ FORWARD_STREAM))
    unguided = run.clustered and digit is None and settings.guidance.clusters == 1.0  # no cluster: the null label
    if match is not None and digit is None:  # (a digit on a clustered run is refused below)
        labels = match.draw(x, ~missing, n, generator)  # (N n,): n clusters of each image's visible pixels
    else:
        labels = None if unguided else edit_labels(run, len(x) * n, digit, generator)
    x0 = (x * 2 - 1).repeat_interleave(n, dim=0)  # (N n, 1, 28, 28) in [-1, 1], n copies of each in a row
    known = (~missing).repeat_interleave(n, dim=0)
    networks = networks_for(run, settings)
    out = []
    for batch in _batches(len(x0), settings.batch_size):
        denoiser = denoiser_for(run, settings, _pick(labels, batch), networks)
        y = repaint(
            denoiser,
            x0[batch].to(device),
            known[batch].to(device),
            steps=settings.steps,
            spacing=settings.spacing,
            jumps=jumps,
            resample=resample,
            generator=generator,
            forward_generator=forward,
            device=device,
            progress=progress,
        )
        out.append(x0_to_unit(y).cpu())
    return torch.cat(out).reshape(len(x), n, *x.shape[1:])


# ----------------------------------------------------------------------------- inversion and interpolation


def invert_settings(run: LoadedRun, sampling: SamplingConfig | None = None, **overrides: Any) -> SamplingConfig:
    """How :func:`invert` and :func:`reconstruct` sample, resolved for ``run``: DDIM with eta = 0
    on the steps given (default: DDIM's), evenly spaced unless a spacing is given (INVERT_DEFAULTS)."""
    s = settings_of(sampling, overrides)
    spacing = INVERT_DEFAULTS.spacing if s.spacing is None else s.spacing
    return resolve_for(run, dataclasses.replace(s, sampler="ddim", eta=0.0, spacing=spacing))


def _inversion(
    run: LoadedRun, n: int, sampling: SamplingConfig | None, digit: int | None, overrides: dict[str, Any]
) -> tuple[SamplingConfig, torch.Tensor | None]:
    """The settings and labels of ``n`` images that :func:`invert` and :func:`reconstruct` share."""
    settings = invert_settings(run, sampling, **overrides)
    return settings, edit_labels(run, n, digit, torch.Generator(device=run.device).manual_seed(settings.seed))


def _invert(run: LoadedRun, x: torch.Tensor, settings: SamplingConfig, labels, progress: bool) -> torch.Tensor:
    check_batch(run, settings, len(x))
    networks = networks_for(run, settings)
    out = []
    for batch in _batches(len(x), settings.batch_size):
        x0 = (x[batch] * 2 - 1).to(run.device)
        denoiser = denoiser_for(run, settings, _pick(labels, batch), networks)
        out.append(ddim_invert(denoiser, x0, steps=settings.steps, spacing=settings.spacing, progress=progress).cpu())
    return torch.cat(out)


def _from_noise(run: LoadedRun, noise: torch.Tensor, settings: SamplingConfig, labels, progress: bool) -> torch.Tensor:
    """The deterministic sampler of ``settings`` from ``noise`` [N x 1 x 28 x 28] at T-1: images in [0, 1]."""
    top = run.schedule.num_timesteps - 1
    generator = torch.Generator(device=run.device).manual_seed(settings.seed)  # an ODE draws nothing from it
    check_batch(run, settings, len(noise))
    networks = networks_for(run, settings)
    out = []
    for batch in _batches(len(noise), settings.batch_size):
        x_t = noise[batch].to(run.device, torch.float32)
        denoiser = denoiser_for(run, settings, _pick(labels, batch), networks)
        x = sample(
            denoiser,
            tuple(x_t.shape),
            settings,
            generator=generator,
            device=run.device,
            progress=progress,
            start=Start(x_t, top),
        )
        out.append(x0_to_unit(x).cpu())
    return torch.cat(out)


def invert(
    run: LoadedRun,
    images: torch.Tensor,
    sampling: SamplingConfig | None = None,
    *,
    digit: int | None = None,
    progress: bool = False,
    **overrides: Any,
) -> torch.Tensor:
    """DDIM inversion (:func:`~mnist_diffusion.diffusion.editing.ddim_invert`) of real digits:
    the noise x_{T-1} that DDIM with eta = 0 (:func:`reconstruct`) turns back into about them.

    :param images: [N x 1 x 28 x 28] in [0, 1] (or one [28 x 28] digit).
    :return: [N x 1 x 28 x 28], the noise (about unit variance).
    """
    x = as_images(images)
    settings, labels = _inversion(run, len(x), sampling, digit, overrides)
    return _invert(run, x, settings, labels, progress)


def reconstruct(
    run: LoadedRun,
    noise: torch.Tensor,
    sampling: SamplingConfig | None = None,
    *,
    digit: int | None = None,
    progress: bool = False,
    **overrides: Any,
) -> torch.Tensor:
    """DDIM with eta = 0 from ``noise`` [N x 1 x 28 x 28] at T-1 (what :func:`invert` returns),
    with the same settings and labels as :func:`invert`. Returns images [N x 1 x 28 x 28] in [0, 1]."""
    settings, labels = _inversion(run, len(noise), sampling, digit, overrides)
    return _from_noise(run, torch.as_tensor(noise), settings, labels, progress)


def _endpoint(run: LoadedRun, end: Endpoint, settings: SamplingConfig, label, progress: bool) -> torch.Tensor:
    """An end of an interpolation as noise [1 x 1 x 28 x 28] at T-1: drawn as `sample -n 1 --seed
    S` draws its noise (after a clustered run's cluster), or a digit inverted."""
    if isinstance(end, int) and not isinstance(end, bool):
        if derive_seed(end) != end:
            raise UserError(f"an end of an interpolation that is a seed must be between 0 and 2^64 - 1 (got {end})")
        g = torch.Generator(device=run.device).manual_seed(end)
        if run.clustered:
            draw_clusters(run.cluster_counts.to(run.device), 1, g)  # drawn first, as generate does
        return torch.randn((1, run.cfg.model.in_channels, 28, 28), generator=g, device=run.device).cpu()
    x = as_images(end, "an end of the interpolation")
    if len(x) != 1:
        raise UserError(f"an end of an interpolation is one digit, not {len(x)}")
    return _invert(run, x, settings, label, progress)


def interpolate_settings(
    run: LoadedRun, sampling: SamplingConfig | None, digits: bool, **overrides: Any
) -> SamplingConfig:
    """How :func:`interpolate` samples, resolved for ``run``: the sampler's ODE (dpmpp-2m-sde as
    dpmpp-2m, ddim with eta = 0; ddpm has none); with a real digit at either end, evenly spaced
    steps unless a spacing is given, as for inversion (INTERPOLATE_DEFAULTS)."""
    s = settings_of(sampling, overrides)
    if s.sampler == "ddpm":
        raise UserError("interpolation needs a deterministic sampler: --sampler ddim or dpmpp-2m")
    d = INTERPOLATE_DEFAULTS
    spacing = s.spacing if s.spacing is not None else d.digit_spacing if digits else d.spacing
    sampler = "dpmpp-2m" if s.sampler == "dpmpp-2m-sde" else s.sampler
    return resolve_for(run, dataclasses.replace(s, sampler=sampler, eta=0.0, spacing=spacing))


def interpolate(
    run: LoadedRun,
    a: Endpoint,
    b: Endpoint,
    sampling: SamplingConfig | None = None,
    *,
    frames: int = INTERPOLATE_FRAMES,
    digit: int | None = None,
    progress: bool = False,
    **overrides: Any,
) -> torch.Tensor:
    """A walk from ``a`` to ``b``: their noises x_{T-1} interpolated on the sphere
    (:func:`~mnist_diffusion.diffusion.editing.slerp`) at ``frames`` evenly spaced points, each
    turned into a digit by the deterministic sampler (:func:`interpolate_settings`), all with one
    label (a clustered run's drawn with the settings' seed).

    :param a, b: a seed (the noise `sample -n 1 --seed S` starts from, so with that seed and
        sampler the walk starts at its digit), or a digit [1 x 28 x 28] in [0, 1], inverted
        first (:func:`invert`).
    :return: [frames x 1 x 28 x 28] in [0, 1].
    """
    count_for(frames, "--frames", low=2)
    digits = not all(isinstance(end, int) for end in (a, b))
    settings = interpolate_settings(run, sampling, digits, **overrides)
    label = edit_labels(run, 1, digit, torch.Generator(device=run.device).manual_seed(settings.seed))
    ends = [_endpoint(run, end, settings, label, progress) for end in (a, b)]
    noise = slerp(ends[0], ends[1], [k / (frames - 1) for k in range(frames)])[:, 0]  # (K, 1, 28, 28)
    return _from_noise(run, noise, settings, label.expand(frames) if label is not None else None, progress)


# ----------------------------------------------------------------------------- SDEdit


def check_strength(strength: float) -> float:
    """SDEdit's strength, which must be in (0, 1]; anything else is a one-line UserError."""
    if not 0.0 < strength <= 1.0:
        raise UserError(f"--strength must be in (0, 1] (got {strength:g})")
    return strength


def sdedit_timestep(strength: float, num_timesteps: int) -> int:
    """The t SDEdit noises a drawing to: round(strength T) - 1, at least 0."""
    return max(round(check_strength(strength) * num_timesteps) - 1, 0)


def sdedit_steps(settings: SamplingConfig, num_timesteps: int, strength: float) -> int:
    """The steps :func:`sdedit` takes with resolved ``settings``: one from its t, then the
    sampler's timesteps below t."""
    t = sdedit_timestep(strength, num_timesteps)
    below = (
        t
        if settings.sampler == "ddpm"
        else sum(s < t for s in spaced_timesteps(num_timesteps, settings.steps, settings.spacing))
    )
    return 1 + below


def sdedit(
    run: LoadedRun,
    init: torch.Tensor,
    n: int = 1,
    sampling: SamplingConfig | None = None,
    *,
    strength: float = SDEDIT_STRENGTH,
    labels: torch.Tensor | None = None,
    digit: int | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    **overrides: Any,
) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): noise a rough drawing to t = strength T with q(x_t | x_0) and
    denoise it from there with the run's sampler on its timesteps below t, ``n`` times. Strength
    1 starts from (nearly) pure noise; a small one stays close to the drawing.

    :param init: the drawing, [1 x 28 x 28] or [28 x 28] (or n of them) in [0, 1].
    :param labels: [n] digits of a conditional run, as :func:`generate` takes (or ``digit``).
    :return: [n x 1 x 28 x 28] in [0, 1], the first batch seen by ``callback`` as in :func:`generate`.
    """
    x0 = as_images(init, "the drawing") * 2 - 1  # (1 or n, 1, 28, 28) in [-1, 1]
    if len(x0) not in (1, n):
        raise UserError(f"give one drawing or {n}, not {len(x0)}")
    t = sdedit_timestep(strength, run.schedule.num_timesteps)
    if digit is not None:
        labels = edit_labels(run, n, digit, torch.Generator())
    x0 = x0.expand(n, *x0.shape[1:]).to(run.device)

    def start(first: int, b: int, generator: torch.Generator) -> Start:
        noise = torch.randn((b, *x0.shape[1:]), generator=generator, device=run.device)
        tt = torch.full((b,), t, dtype=torch.long, device=run.device)
        return Start(run.schedule.q_sample(x0[first : first + b], tt, noise), t)

    settings = settings_of(sampling, overrides)
    return generate(run, n, settings, labels=labels, progress=progress, callback=callback, start=start)


def reconstruction_error(images: torch.Tensor, reconstructions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image [N x 1 x 28 x 28] in [0, 1]: the mean squared error [N] and the PSNR [N] in dB,
    10 log10(1 / MSE) (pixels in [0, 1]; at most 100 dB)."""
    mse = (reconstructions.float() - images.float()).pow(2).flatten(1).mean(1)
    return mse, 10 * torch.log10(1 / mse.clamp(min=1e-10))
