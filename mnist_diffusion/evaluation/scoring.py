"""Sample quality of a run: the core of `mnistdiff eval`.

Samples and real MNIST test images go through the shipped feature net
(:mod:`mnist_diffusion.features`); :mod:`mnist_diffusion.metrics` compares the two sets. Every
metric comes with two *floors* made of real digits (:mod:`.reference`): N real training images
against the test set (what a perfect model would score at this N: FID, precision and recall all
depend on N), and one half of the test set against the other.

Every metric also comes with an interval (:mod:`.uncertainty`): over K independent sample sets
(``repeats``), or, for one set, from a bootstrap over its samples (:mod:`.bootstrap`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import SamplingConfig
from ..data.mnist import DEFAULT_DATA_DIR, as_unit
from ..diffusion.nll import DEFAULT_NLL_TIMESTEPS, float64_device, nll_bpd
from ..errors import UserError
from ..io import atomic_write_json
from ..pictures.grids import check_images
from ..runs.loader import LoadedRun, load_run
from ..runs.store import EVALS, MAX_EVALS, append_eval, read_evals, write_manifest
from ..runtime import autocast_dtype, precision_name
from ..sampling.generate import balanced_labels, count_for, generate, resolve_for
from ..seeds import derive_seed
from . import metrics
from .cas import CAS_EPOCHS, cas
from .features import extract
from .reference import (
    MIN_SAMPLES,
    RealData,
    feature_net,
    floor_indices,
    half_test_floor,
    real_data,
    real_floor,
    real_reference,
    score,
)
from .uncertainty import BOOTSTRAP_RESAMPLES, INTERVAL_METRICS, LEVEL, MAX_REPEATS, MAX_RESAMPLES, over_repeats

__all__ = ["EVAL_FILE", "MIN_SAMPLES", "RealData", "evaluate_images", "evaluate_run", "feature_net", "fid_of"]
__all__ += ["real_reference", "repeat_seed"]

EVAL_FILE = "eval.json"
REPEAT_STRIDE = 1_000_003  # repeat r samples with seed + r * REPEAT_STRIDE: far from the seeds users step through


def repeat_seed(seed: int, repeat: int) -> int:
    """The sampling seed of repeat ``repeat`` (0, 1, ...) of ``eval --repeats``; repeat 0 is ``seed``."""
    return derive_seed(seed, repeat * REPEAT_STRIDE)


def evaluate_images(
    images: torch.Tensor | list[torch.Tensor],
    *,
    data_dir: str | os.PathLike | None = DEFAULT_DATA_DIR,
    n_floor: int | None = None,
    labels: torch.Tensor | None = None,
    seed: int | list[int] = 0,
    device: str | torch.device = "cpu",
    progress: bool = False,
    reference: RealData | None = None,
    kid_subsets: int = 100,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, Any]:
    """All metrics of ``images`` against the MNIST test set, their intervals, and the floors.

    :param images: ``(N, 1, 28, 28)`` floats in [0, 1], N >= 10; or a list of K such sets drawn
        independently (repeats), all with the same N and ``labels``.
    :param n_floor: how many real training images form the train-vs-test floor (a fixed seeded
        random subset); None: N, the same as the samples; 0: no floors.
    :param labels: ``(N,)`` classes the images were asked to be (conditional sampling); adds
        ``label_accuracy``.
    :param seed: seeds the KID subsets and the bootstrap; one per set for a list.
    :param reference: real data to use instead of the MNIST files in ``data_dir``.
    :param bootstrap: resamples of the bootstrap over one set's samples (0: none); a list of
        sets has an interval over its sets instead.
    :return: ``{"model": {...}, "real": {...} or None, "n": N, "n_floor", "n_reference",
        "feature_net": {"accuracy", "sha256"}, "uncertainty": {...} or None, "floors":
        {"train_vs_test", "test_vs_test"}, "cas": None}``; each metric dict holds ``fid``,
        ``kid_mean``, ``kid_std``, ``precision``, ``recall``, ``density``, ``coverage``,
        ``inception_score``, ``class_histogram``, ``mean_confidence``, ``confident_share`` (> 0.9)
        and, with labels, ``label_accuracy``. For K sets, ``model`` holds the mean of each metric
        over the sets (the class histogram: the sum).
    """
    sets = [check_images(x, "images") for x in (images if isinstance(images, list) else [images])]
    seeds = seed if isinstance(seed, list) else [seed] * len(sets)
    n = len(sets[0])
    if n < MIN_SAMPLES:
        raise UserError(f"need at least {MIN_SAMPLES} images to evaluate, got {n}")
    if any(len(x) != n for x in sets) or len(seeds) != len(sets):
        raise UserError(f"repeated sample sets need the same N and one seed each, got {[len(x) for x in sets]}")
    if labels is not None and tuple(labels.shape) != (n,):
        raise UserError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    check_bootstrap(bootstrap)
    net, info = feature_net(device)
    real, _ = real_data(data_dir, reference)
    ref_feats, _ = real_reference(None, net, reference=real, progress=progress)
    resamples = bootstrap if len(sets) == 1 else 0
    scored = []
    for images, set_seed in zip(sets, seeds, strict=True):
        feats, probs = extract(net, images, progress=progress)
        scored.append(
            score(ref_feats, feats, probs, labels, seed=set_seed, kid_subsets=kid_subsets, bootstrap=resamples)
        )
    result = {
        "model": _mean_of([values for values, _ in scored]),
        "real": None,
        "n": n,
        "n_floor": 0,
        "n_reference": len(ref_feats),
        "feature_net": {"accuracy": info["test_accuracy"], "sha256": info["sha256"]},
        "uncertainty": None,
        "floors": {"train_vs_test": None, "test_vs_test": None},
        "cas": None,
    }
    floor_intervals = None
    n_floor = n if n_floor is None else n_floor
    if n_floor:
        kw = {"seed": seeds[0], "kid_subsets": kid_subsets, "with_labels": labels is not None}
        result["real"], floor_intervals, result["n_floor"] = real_floor(real, net, n_floor, bootstrap=resamples, **kw)
        result["floors"] = {"train_vs_test": result["real"], "test_vs_test": half_test_floor(real, net, n, **kw)}
    if len(sets) > 1:
        per_set = [values for values, _ in scored]
        intervals = {key: over_repeats([v[key] for v in per_set]) for key in INTERVAL_METRICS if key in per_set[0]}
        result["uncertainty"] = _uncertainty("repeats", len(sets), None, intervals, None)
    elif resamples:
        result["uncertainty"] = _uncertainty("bootstrap", 1, resamples, scored[0][1], floor_intervals)
    return result


def check_bootstrap(resamples: int) -> None:
    """A one-line UserError unless ``resamples`` is 0 (no bootstrap) or at least 2."""
    if resamples < 0 or resamples == 1 or resamples > MAX_RESAMPLES:
        raise UserError(f"--bootstrap takes 0 (no intervals) or 2 to {MAX_RESAMPLES:,} resamples, got {resamples}")


def _uncertainty(method: str, repeats: int, bootstrap: int | None, model: dict, real: dict | None) -> dict[str, Any]:
    order = [key for key in INTERVAL_METRICS if key in model]
    return {
        "level": LEVEL,
        "method": method,
        "repeats": repeats,
        "bootstrap": bootstrap,
        "model": {key: model[key] for key in order},
        "real": None if real is None else {key: real[key] for key in order if key in real},
    }


def _mean_of(per_set: list[dict[str, Any]]) -> dict[str, Any]:
    """One metric dict of K sets' dicts: each number's mean, the class histograms' sum."""
    if len(per_set) == 1:
        return per_set[0]
    out = {}
    for key in per_set[0]:
        if key == "class_histogram":
            out[key] = [sum(counts) for counts in zip(*(v[key] for v in per_set), strict=True)]
        else:
            out[key] = sum(v[key] for v in per_set) / len(per_set)
    return out


def fid_of(
    images: torch.Tensor, *, data_dir: str | os.PathLike | None = DEFAULT_DATA_DIR, device: str | torch.device = "cpu"
) -> float:
    """The FID alone of ``images`` ``(N, 1, 28, 28)`` in [0, 1] against the MNIST test set, with the
    feature net and reference features :func:`evaluate_images` uses (and caches): what `train
    --eval-every` logs, without the other metrics' cost (KID alone takes longer than the FID)."""
    images = check_images(images, "images")
    if len(images) < MIN_SAMPLES:
        raise UserError(f"need at least {MIN_SAMPLES} images to evaluate, got {len(images)}")
    net, _ = feature_net(device)
    ref_feats, _ = real_reference(data_dir, net)
    feats, _ = extract(net, images)
    return metrics.fid(ref_feats, feats)


def evaluate_run(
    run_dir: str | os.PathLike,
    sampling: SamplingConfig = SamplingConfig(),
    *,
    n_samples: int = 10_000,
    device: str | torch.device = "cpu",
    data_dir: str | os.PathLike | None = DEFAULT_DATA_DIR,
    nll_images: int = 0,
    nll_timesteps: int | None = DEFAULT_NLL_TIMESTEPS,
    progress: bool = False,
    reference: RealData | None = None,
    kid_subsets: int = 100,
    repeats: int = 1,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
    with_cas: bool = False,
    cas_epochs: int = CAS_EPOCHS,
) -> dict[str, Any]:
    """Sample ``n_samples`` images from a run with ``sampling``, evaluate them, and write
    ``eval.json`` into the run, and add it to the run's ``evals.jsonl``, which keeps each one.

    A class-conditional run samples balanced labels ``i % 10``, a clustered one draws clusters by
    size. With ``repeats`` K > 1, K sample sets with seeds :func:`repeat_seed` and an interval over
    them; else a bootstrap of ``bootstrap`` resamples (0: no interval). ``with_cas`` (a conditional
    run only) adds the Classification Accuracy Score of the first set. With ``nll_images`` > 0,
    also the NLL bound (bits/dim) of the first that many test images.
    :return: the dict written to ``eval.json``: :func:`evaluate_images`'s result plus the sampling
        settings (resolved for the run: what was really used), the NLL and wall times; and
        ``"evaluation"``: its number K in ``evals.jsonl`` (``compare RUN@K``).
    """
    if n_samples < MIN_SAMPLES:
        raise UserError(f"need at least {MIN_SAMPLES} samples to evaluate, got {n_samples}")
    count_for(n_samples, "-n")
    if nll_images < 0:
        raise UserError(f"the NLL needs a positive number of test images, got {nll_images}")
    if not 1 <= repeats <= MAX_REPEATS:
        raise UserError(f"--repeats must be from 1 to {MAX_REPEATS}, got {repeats}")
    count_for(n_samples * repeats, "-n x --repeats")  # every set is held until all are scored
    check_bootstrap(bootstrap)
    run_dir = Path(run_dir)
    device = torch.device(device)
    run = load_run(run_dir, device)
    earlier = len(read_evals(run_dir))  # an evals.jsonl that cannot be read fails here, before the sampling
    if with_cas and not run.conditional:
        raise UserError("--cas needs a class-conditional run (train it with --conditional): it trains on the labels")
    real, _ = real_data(data_dir, reference)  # fail early if MNIST is missing
    settings = resolve_for(run, sampling)
    seeds = [repeat_seed(settings.seed, r) for r in range(repeats)]

    start = time.perf_counter()
    labels = balanced_labels(n_samples) if run.conditional else None
    sets = [
        generate(run, n_samples, dataclasses.replace(settings, seed=s), labels=labels, progress=progress) for s in seeds
    ]
    sample_seconds = time.perf_counter() - start

    start = time.perf_counter()
    result = evaluate_images(
        sets,
        data_dir=data_dir,
        labels=labels,
        seed=seeds,
        device=device,
        progress=progress,
        reference=real,
        kid_subsets=kid_subsets,
        bootstrap=bootstrap,
    )
    metric_seconds = time.perf_counter() - start

    start = time.perf_counter()
    if with_cas:
        idx = floor_indices(real, n_samples)
        result["cas"] = cas(
            (sets[0], labels),
            (as_unit(real.train[0][idx]), real.train[1][idx]),
            (as_unit(real.test[0]), real.test[1]),
            epochs=cas_epochs,
            device=device,
        )
    cas_seconds = time.perf_counter() - start

    result["nll"] = None
    if nll_images:
        generator = torch.Generator(float64_device(device)).manual_seed(settings.seed)
        result["nll"] = nll_bpd(
            run.model,
            run.schedule,
            real.test[0][:nll_images],
            batch_size=settings.batch_size,
            generator=generator,
            progress=progress,
            timesteps_subsample=nll_timesteps,
        )
    sampling_record = _sampling_record(settings, run, device)
    if repeats > 1:
        sampling_record["repeat_seeds"] = seeds
    result.update(
        run=run_dir.name,
        sampling=sampling_record,
        device=str(device),
        seconds={
            "sampling": round(sample_seconds, 2),
            "metrics": round(metric_seconds, 2),
            "cas": round(cas_seconds, 2) if with_cas else None,
            "nll": result["nll"]["seconds"] if result["nll"] else None,
        },
        mnist_diffusion_version=__version__,
        torch_version=torch.__version__,
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        evaluation=min(earlier, MAX_EVALS - 1) + 1,  # its place in evals.jsonl: `compare RUN@K`
    )
    atomic_write_json(run_dir / EVAL_FILE, result)
    try:
        append_eval(run_dir, result)
    except UserError as e:
        raise UserError(f"{EVAL_FILE} saved, but {EVALS} not: {e}") from None
    finally:
        write_manifest(run_dir)
    return result


def _sampling_record(settings: SamplingConfig, run: LoadedRun, device: torch.device) -> dict[str, Any]:
    """What ``eval.json`` says of how its samples were drawn: the resolved settings, the guidance in
    words, what the network ran in (bf16, fp16 or fp32), and how labels were chosen."""
    return {
        **settings.to_dict(),
        "guidance_text": settings.guidance.describe(),
        "network_precision": precision_name(autocast_dtype(settings.precision, device)),
        "labels": "i % 10" if run.conditional else "drawn from the cluster sizes" if run.clustered else None,
    }
