"""mnistdiff: train, sample and evaluate denoising diffusion models on MNIST.

The package in layers; a module imports only from the layers above its own:

- ``errors``, ``io``, ``config``: the one exception users see; crash-safe files and verified
  safetensors; every default (RunConfig, SamplingConfig, presets).
- ``runtime``: devices, precision, CPU threads, torch.distributed.
- ``diffusion``: the maths, no files (schedules, losses, guidance, samplers, NLL).
- ``nets``: the networks, which know nothing of diffusion.
- ``data``: MNIST on disk, and pixel clusters as self-labels.
- ``pictures``: PNG grids both ways, figures.
- ``runs``: run folders, checkpoints, the run loader.
- ``training``, ``sampling``: the training loop and its resume rules; samples from a run.
- ``evaluation``: metrics, the feature net, scoring.
- ``monitors``: watchers of a training run (sample grids and FID every N steps, TensorBoard).
- ``report``: report.html of a run and index.html of all runs, self-contained pages.
- ``cli``: the Typer app, thin commands over the functions above.
"""

__version__ = "0.1.0"
