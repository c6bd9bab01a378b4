"""The networks. Each maps its input to a prediction and knows nothing of diffusion, files or
training: :mod:`.unet` (the denoisers) and :mod:`.features` (the classifier whose features the
evaluation compares)."""

from torch import nn


def count_parameters(model: nn.Module) -> int:
    """The number of weights of ``model``."""
    return sum(p.numel() for p in model.parameters())
