"""The Python API, for notebooks and scripts::

    from mnist_diffusion import load_run, sample, inpaint, interpolate, invert

    run = load_run()                                  # the latest run in ./artifacts
    digits = sample(run, 16, steps=20, seed=1)        # [16 x 1 x 28 x 28] in [0, 1]

:func:`load_run` and :func:`sample` live here; the editing functions in :mod:`.editing`.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..config import DEFAULT_ARTIFACTS_DIR, SamplingConfig
from ..runs.loader import LoadedRun
from ..runs.loader import load_run as load_run_dir
from ..runs.store import resolve_run
from ..runtime import setup_device
from .editing import settings_of
from .generate import generate, parse_labels


def load_run(
    run: str | int | os.PathLike | None = None,
    *,
    device: str = "auto",
    artifacts_dir: str | os.PathLike = DEFAULT_ARTIFACTS_DIR,
) -> LoadedRun:
    """A trained run, ready to sample: a run folder, a name (``"00003-default"``, ``"default"``)
    or a number (``3``), as ``mnistdiff sample --run`` takes them; None: the latest run in
    ``artifacts_dir``. ``device``: auto, cpu, cuda or mps."""
    path = resolve_run(None if run is None else str(run), artifacts_dir)
    return load_run_dir(path, setup_device(device))


def sample(
    run: LoadedRun,
    n: int = 8,
    sampling: SamplingConfig | None = None,
    *,
    digit: int | None = None,
    labels: torch.Tensor | list[int] | None = None,
    progress: bool = False,
    **overrides: Any,
) -> torch.Tensor:
    """``n`` digits drawn from ``run``, as ``mnistdiff sample`` draws them: [n x 1 x 28 x 28] in
    [0, 1] on the CPU. How to sample: a :class:`SamplingConfig`, its fields as keywords
    (``sampler="ddim", steps=20, seed=1``), or both. A conditional run draws ``digit``, the
    ``labels`` [n] given, or rows of 0 to 9."""
    given = labels is not None
    labels = torch.as_tensor(labels, dtype=torch.long) if given else parse_labels(digit, None, n, run.conditional)
    if given and (labels.shape != (n,) or not run.conditional):
        raise ValueError("labels must be n digits, for a class-conditional run")
    return generate(run, n, settings_of(sampling, overrides), labels=labels, progress=progress)
