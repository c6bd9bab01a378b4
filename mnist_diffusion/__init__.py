"""mnistdiff: train, sample and evaluate denoising diffusion models on MNIST.

The package in layers; a module imports only from the layers above its own:

- ``errors``, ``io``, ``seeds``, ``config``: the one exception users see; crash-safe files and
  verified safetensors; the seeds' range and derivation; every default (RunConfig,
  SamplingConfig, presets) and range, with the memory estimates that bound counts.
- ``allocator``: glibc's malloc, and torch's huge pages for training, set before anything allocates.
- ``runtime``: devices, precision, CPU threads, torch.distributed.
- ``diffusion``: the maths, no files (schedules, losses, guidance, samplers, editing, NLL).
- ``nets``: the networks, which know nothing of diffusion.
- ``data``: MNIST on disk, and pixel clusters as self-labels.
- ``pictures``: PNG grids both ways, figures, animations, the pictures users hand in.
- ``runs``: run folders, checkpoints, the run loader.
- ``training``, ``sampling``: the training loop and its resume rules; samples and edits from a run.
- ``evaluation``: metrics, the feature net, scoring.
- ``monitors``: watchers of a training run (sample grids and FID every N steps, TensorBoard).
- ``report``: report.html of a run and index.html of all runs, self-contained pages.
- ``cli``: the Typer app, thin commands over the functions above.

The Python API, imported when first used (``import mnist_diffusion`` itself loads no torch)::

    from mnist_diffusion import load_run, sample, inpaint, interpolate, invert
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> the module that defines it (PEP 562: each is imported on first use)
_API = {
    "load_run": "mnist_diffusion.sampling.api",
    "sample": "mnist_diffusion.sampling.api",
    "inpaint": "mnist_diffusion.sampling.editing",
    "interpolate": "mnist_diffusion.sampling.editing",
    "invert": "mnist_diffusion.sampling.editing",
    "reconstruct": "mnist_diffusion.sampling.editing",
    "sdedit": "mnist_diffusion.sampling.editing",
    "SamplingConfig": "mnist_diffusion.config",
    "Guidance": "mnist_diffusion.config",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'mnist_diffusion' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
