"""The Classification Accuracy Score (Ravuri & Vinyals 2019) of a class-conditional model.

Train a classifier on N generated digits, labelled with the classes they were asked to be, and
test it on the 10,000 real MNIST test digits: a model whose samples are sharp but wrong, or right
but all alike, trains a poor classifier. Beside it, the same classifier trained on N real training
digits: the score a perfect model would reach at this N.

The classifier is the feature net's architecture and recipe
(:func:`~mnist_diffusion.evaluation.features.fit_classifier`), trained from scratch for
``CAS_EPOCHS`` epochs in batches of ``CAS_BATCH`` with a fixed seed: 96.7% test accuracy from 1,000
real digits, and on one busy CPU core about 25 s per epoch of 10,000 digits.
The interval is binomial over the test digits: it does not hold the spread between training seeds
of the classifier.
"""

from __future__ import annotations

from typing import Any

import torch

from .features import fit_classifier
from .uncertainty import LEVEL, binomial

CAS_EPOCHS = 3  # epochs of each CAS classifier
CAS_BATCH = 32  # its batch: small, so that 1,000 digits still make ~90 steps
CAS_SEED = 0  # the classifier's seed, the same for every run


@torch.inference_mode()
def _correct(net, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> int:
    return sum(
        int((net(images[s : s + batch_size]).argmax(1) == labels[s : s + batch_size]).sum())
        for s in range(0, len(images), batch_size)
    )


def classification_accuracy(
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int = CAS_EPOCHS,
    seed: int = CAS_SEED,
    device: str | torch.device = "cpu",
    level: float = LEVEL,
) -> dict[str, Any]:
    """Accuracy on ``test`` of a classifier trained on ``train``, each ``((N, 1, 28, 28) images in
    [0, 1], (N,) int64 labels)``: ``{"accuracy", "se", "low", "high", "n"}``, n the test digits,
    with Wilson's interval (:func:`~.uncertainty.binomial`)."""
    (train_x, train_y), (test_x, test_y) = train, test
    if len(train_x) < 2 or len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"need at least 2 training images with one label each, got {len(train_x)}, {len(train_y)}")
    net = fit_classifier(train_x.float(), train_y.long(), seed=seed, epochs=epochs, batch_size=CAS_BATCH, device=device)
    return binomial(_correct(net, test_x.float(), test_y.long()), len(test_x), level)


def cas(
    samples: tuple[torch.Tensor, torch.Tensor],
    real_train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    epochs: int = CAS_EPOCHS,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, Any]]:
    """``{"samples": ..., "real": ...}``: :func:`classification_accuracy` of the generated digits
    and of as many real training digits, both tested on ``test``."""
    return {
        "samples": classification_accuracy(samples, test, epochs=epochs, device=device),
        "real": classification_accuracy(real_train, test, epochs=epochs, device=device),
    }
