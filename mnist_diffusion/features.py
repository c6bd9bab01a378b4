"""The MNIST feature network that sample-quality metrics are computed in.

FID, KID, precision/recall and the rest (see :mod:`mnist_diffusion.metrics`) are distances in the
feature space of some classifier. For ImageNet that is Inception-v3; for MNIST it is
:class:`FeatureNet`, a small CNN whose weights ship inside the package (``assets/feature_net.*``),
so every user's numbers come from the same network and nothing is downloaded.

Make the weights again with ``python -m mnist_diffusion.features`` (``make features``): a fixed
seed, about five minutes on two CPU cores, >= 99.3% accuracy on the MNIST test set.
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
from torch import nn
from tqdm.auto import tqdm

from .data import DEFAULT_DATA_DIR, load_mnist
from .errors import UserError
from .io import atomic_write_bytes, atomic_write_json

ASSETS_DIR = Path(__file__).parent / "assets"
WEIGHTS = "feature_net.safetensors"
INFO = "feature_net.json"
FEATURE_DIM = 128  # D: length of the penultimate feature vector the metrics use
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # pixel statistics of the MNIST training set, in [0, 1]


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> ReLU, twice, then 2x2 max-pool: ``(N, c_in, H, W) -> (N, c_out, H/2, W/2)``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )  # fmt: skip


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


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


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


def _to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)`` in [0, 1]."""
    return images.unsqueeze(1).float() / 255


@torch.inference_mode()
def accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of ``(N, 1, 28, 28)`` images in [0, 1] whose predicted class is the label."""
    net.eval()
    correct = sum(
        int((net(images[s : s + batch_size]).argmax(1) == labels[s : s + batch_size]).sum())
        for s in range(0, len(images), batch_size)
    )
    return correct / len(images)


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
    """Train :class:`FeatureNet` on the 60,000 MNIST training images, test it on the 10,000 test
    images, and write ``feature_net.safetensors`` and ``feature_net.json`` into ``out_dir``.

    AdamW with a one-cycle learning rate, random affine augmentation; the seed fixes the
    initialisation, the batch order and the augmentation.

    :return: the info dict written to ``feature_net.json``.
    """
    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = load_mnist(data_dir, "train")
    test_x, test_y = load_mnist(data_dir, "test")
    train_x, test_x = _to_float(train_x), _to_float(test_x).to(device)  # (N, 1, 28, 28)
    test_y = test_y.to(device)

    net = FeatureNet().to(device)
    steps_per_epoch = len(train_x) // batch_size  # the last partial batch is dropped
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train_x), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for i in bar:
            idx = order[i * batch_size : (i + 1) * batch_size]
            x = _augment(train_x[idx], generator).to(device)
            loss = F.cross_entropy(net(x), train_y[idx].to(device), label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: test accuracy {accuracy(net, test_x, test_y):.4f}", flush=True)

    net = net.cpu().eval()
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
        "num_parameters": num_parameters(net),
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


def load_feature_net(device: str | torch.device = "cpu", assets_dir: str | os.PathLike = ASSETS_DIR
                     ) -> tuple[FeatureNet, dict[str, Any]]:  # fmt: skip
    """The shipped feature net in eval mode, and its info dict (``feature_net.json``).

    The weights' sha256 must match the one recorded in the info; a missing, altered or unreadable
    file is a :class:`UserError`.
    """
    assets_dir = Path(assets_dir)
    weights_path, info_path = assets_dir / WEIGHTS, assets_dir / INFO
    try:
        info = json.loads(info_path.read_text())
        blob = weights_path.read_bytes()
    except FileNotFoundError as e:
        raise UserError(f"the feature net is missing ({e.filename}); rebuild it with `make features`") from None
    except (OSError, ValueError) as e:
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
def extract(net: FeatureNet, images: torch.Tensor, batch_size: int = 1000, progress: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
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
    parser = argparse.ArgumentParser(prog="python -m mnist_diffusion.features", description=__doc__.splitlines()[0])
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
