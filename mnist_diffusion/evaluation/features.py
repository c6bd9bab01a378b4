"""The feature net of the evaluation (:class:`~mnist_diffusion.nets.features.FeatureNet`): its
shipped weights, how they were trained, and feature extraction.

FID, KID, precision/recall and the rest (:mod:`.metrics`) are distances in the feature space of
this small MNIST classifier. Its weights ship inside the package (``assets/feature_net.*``), so
every user's numbers come from the same network and nothing is downloaded.

Make the weights again with ``python -m mnist_diffusion.evaluation.features`` (``make features``):
a fixed seed, about five minutes on two CPU cores, >= 99.3% accuracy on the MNIST test set.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load, save
from tqdm.auto import tqdm

from ..data.mnist import DEFAULT_DATA_DIR, as_unit, load_mnist
from ..errors import UserError
from ..io import FEATURE_NET_MAX_BYTES, JSON_MAX_BYTES, NotReadable, atomic_write_bytes, atomic_write_json, read_bounded
from ..nets import count_parameters
from ..nets.features import FEATURE_DIM, FeatureNet

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
WEIGHTS = "feature_net.safetensors"
INFO = "feature_net.json"


# ----------------------------------------------------------------------------- training


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random affine warp per image: rotation +-10 degrees, scale 0.9..1.1, shift +-2 pixels.

    ``(N, 1, 28, 28) -> (N, 1, 28, 28)``, zeros (black) outside the original image.
    """
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator) * 2 - 1  # (N, 4) in [-1, 1)
    angle, scale, shift = u[:, 0] * (10 * torch.pi / 180), 1 + 0.1 * u[:, 1], u[:, 2:] * (2 * 2 / 28)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, 28, 28, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.inference_mode()
def accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of ``(N, 1, 28, 28)`` images in [0, 1] whose predicted class is the label."""
    net.eval()
    correct = sum(
        int((net(images[s : s + batch_size]).argmax(1) == labels[s : s + batch_size]).sum())
        for s in range(0, len(images), batch_size)
    )
    return correct / len(images)


def _train_epoch(net: FeatureNet, opt, sched, train_x, train_y, batches, generator: torch.Generator) -> None:
    """One pass over ``batches`` (index tensors into ``train_x`` (N, 1, 28, 28) and ``train_y``),
    each augmented, with label-smoothed cross-entropy."""
    net.train()
    device = next(net.parameters()).device
    for i, idx in enumerate(batches):
        x = _augment(train_x[idx], generator).to(device)
        loss = F.cross_entropy(net(x), train_y[idx].to(device), label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if i % 50 == 0 and hasattr(batches, "set_postfix"):
            batches.set_postfix(loss=f"{loss.item():.3f}")


def fit_classifier(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    seed: int = 0,
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 4e-3,
    device: str | torch.device = "cpu",
    progress: bool = False,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> FeatureNet:
    """A :class:`FeatureNet` trained from scratch on ``(N, 1, 28, 28)`` images in [0, 1] and their
    ``(N,)`` labels: the shipped recipe (AdamW, one-cycle learning rate, random affine augmentation,
    label smoothing 0.05); the seed fixes the initialisation, the batch order and the augmentation.

    :param test: images and labels whose accuracy is printed after each epoch when ``progress``.
    :return: the net, on the CPU, in eval mode.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = FeatureNet().to(device)
    batch_size = min(batch_size, len(train_x))
    steps_per_epoch = len(train_x) // batch_size  # the last partial batch is dropped
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        order = torch.randperm(len(train_x), generator=generator)
        batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(steps_per_epoch)]
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        _train_epoch(net, opt, sched, train_x, train_y, bar, generator)
        if progress and test is not None:
            print(f"epoch {epoch + 1}/{epochs}: test accuracy {accuracy(net, *test):.4f}", flush=True)
    return net.cpu().eval()


def train_feature_net(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    out_dir: str | os.PathLike = ASSETS_DIR,
    *,
    seed: int = 0,
    epochs: int = 8,
    batch_size: int = 128,
    lr: float = 4e-3,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Train :class:`FeatureNet` on the 60,000 MNIST training images (:func:`fit_classifier`), test
    it on the 10,000 test images, and write ``feature_net.safetensors`` and ``feature_net.json``
    into ``out_dir``.

    :return: the info dict written to ``feature_net.json``.
    """
    start = time.perf_counter()
    train_x, train_y = load_mnist(data_dir, "train")
    test_x, test_y = load_mnist(data_dir, "test")
    train_x, test_x = as_unit(train_x), as_unit(test_x).to(device)  # (N, 1, 28, 28)
    test_y = test_y.to(device)
    net = fit_classifier(
        train_x,
        train_y,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        device=device,
        progress=progress,
        test=(test_x, test_y),
    )
    test_accuracy = accuracy(net, test_x.cpu(), test_y.cpu())
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    blob = save(state, metadata={"format": "pt"})
    info = {
        "test_accuracy": test_accuracy,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "feature_dim": FEATURE_DIM,
        "num_parameters": count_parameters(net),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "train_seconds": round(time.perf_counter() - start, 1),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / WEIGHTS, blob)
    atomic_write_json(out_dir / INFO, info)
    return info


# ----------------------------------------------------------------------------- loading and extraction


def load_feature_net(
    device: str | torch.device = "cpu", assets_dir: str | os.PathLike = ASSETS_DIR
) -> tuple[FeatureNet, dict[str, Any]]:
    """The shipped feature net in eval mode, and its info dict (``feature_net.json``).

    The weights' sha256 must match the one recorded in the info; a missing, altered or unreadable
    file is a :class:`UserError`.
    """
    assets_dir = Path(assets_dir)
    weights_path, info_path = assets_dir / WEIGHTS, assets_dir / INFO
    try:  # package data: a symlink to the files (as some installers make) is fine, a FIFO or a huge file is not
        info = json.loads(read_bounded(info_path, JSON_MAX_BYTES, "a JSON file", follow_links=True))
        blob = read_bounded(weights_path, FEATURE_NET_MAX_BYTES, "the feature net", follow_links=True)
    except FileNotFoundError as e:
        raise UserError(f"the feature net is missing ({e.filename}); rebuild it with `make features`") from None
    except NotReadable as e:
        raise UserError(f"cannot read the feature net in {assets_dir}: {e}") from None
    except (OSError, ValueError, RecursionError) as e:
        raise UserError(f"cannot read the feature net in {assets_dir}: {e}") from None
    if not isinstance(info, dict) or "sha256" not in info:
        raise UserError(f"{info_path}: no sha256 recorded; rebuild it with `make features`")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != info["sha256"]:
        raise UserError(f"{weights_path} has sha256 {digest[:12]}..., expected {info['sha256'][:12]}...: corrupt")
    net = FeatureNet(feature_dim=int(info.get("feature_dim", FEATURE_DIM)))
    try:
        net.load_state_dict(load(blob))
    except (SafetensorError, RuntimeError) as e:
        raise UserError(f"{weights_path}: does not hold FeatureNet weights ({str(e).splitlines()[0]})") from None
    return net.to(device).eval(), info


@torch.inference_mode()
def extract(
    net: FeatureNet, images: torch.Tensor, batch_size: int = 1000, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and class probabilities of ``(N, 1, 28, 28)`` images in [0, 1].

    :return: ``(features, probs)``: float32 CPU tensors ``(N, D)`` and ``(N, 10)``.
    """
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must have shape (N, 1, 28, 28), got {tuple(images.shape)}")
    net.eval()
    device = next(net.parameters()).device
    feats, probs = [], []
    for s in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress, leave=False):
        f, p = net.features_and_probs(images[s : s + batch_size].to(device, torch.float32))
        feats.append(f.float().cpu())
        probs.append(p.float().cpu())
    if not feats:
        return torch.empty(0, net.classifier.in_features), torch.empty(0, 10)
    return torch.cat(feats), torch.cat(probs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_diffusion.evaluation.features", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="folder holding MNIST/raw")
    parser.add_argument("--out", default=str(ASSETS_DIR), help="folder to write the weights and info into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    info = train_feature_net(args.data_dir, args.out, seed=args.seed, epochs=args.epochs, device=args.device)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
