"""The MNIST classifier whose features the sample-quality metrics compare (FID, KID, precision and
recall are distances in some classifier's feature space: Inception-v3 for ImageNet, this small CNN
for MNIST). Its trained weights ship with the package: see :mod:`mnist_diffusion.evaluation.features`.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURE_DIM = 128  # D: length of the penultimate feature vector the metrics use
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # pixel statistics of the MNIST training set, in [0, 1]


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> ReLU, twice, then 2x2 max-pool: ``(N, c_in, H, W) -> (N, c_out, H/2, W/2)``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FeatureNet(nn.Module):
    """A small MNIST classifier: three conv blocks, a D-dim feature layer, a linear classifier.

    Input ``(N, 1, 28, 28)`` images with pixels in [0, 1]; the net normalises them itself.
    """

    def __init__(self, feature_dim: int = FEATURE_DIM, width: int = 16):
        super().__init__()
        self.trunk = nn.Sequential(
            _conv_block(1, width),  # (N, w, 14, 14)
            _conv_block(width, 2 * width),  # (N, 2w, 7, 7)
            _conv_block(2 * width, 4 * width),  # (N, 4w, 3, 3)
            nn.Flatten(),  # (N, 36w)
        )
        self.embed = nn.Sequential(
            nn.Linear(4 * width * 9, feature_dim, bias=False), nn.BatchNorm1d(feature_dim), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 28, 28)`` in [0, 1] -> ``(N, D)`` penultimate features (after the ReLU)."""
        return self.embed(self.trunk((x - MNIST_MEAN) / MNIST_STD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 28, 28)`` in [0, 1] -> ``(N, 10)`` logits."""
        return self.classifier(self.dropout(self.features(x)))

    def features_and_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both outputs of one pass: ``(N, D)`` features and ``(N, 10)`` softmax probabilities."""
        f = self.features(x)
        return f, self.classifier(self.dropout(f)).softmax(dim=1)
