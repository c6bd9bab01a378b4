"""mnistdiff: train, sample and evaluate denoising diffusion models on MNIST."""

__version__ = "0.1.0"
