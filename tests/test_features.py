"""The shipped MNIST feature net (mnist_diffusion.features): integrity, accuracy, shapes, training."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_diffusion.errors import UserError
from mnist_diffusion.evaluation.features import ASSETS_DIR, INFO, WEIGHTS, extract, load_feature_net, train_feature_net
from mnist_diffusion.nets.features import FEATURE_DIM, FeatureNet

FIXTURE = Path(__file__).parent / "fixtures" / "mnist_small.npz"


@pytest.fixture(scope="module")
def shipped():
    return load_feature_net("cpu")


def test_shipped_weights_match_recorded_sha(shipped):
    net, info = shipped
    assert hashlib.sha256((ASSETS_DIR / WEIGHTS).read_bytes()).hexdigest() == info["sha256"]
    assert not net.training
    assert info["feature_dim"] == FEATURE_DIM
    assert info["num_parameters"] == sum(p.numel() for p in net.parameters())
    assert (ASSETS_DIR / WEIGHTS).stat().st_size < 2_000_000


def test_recorded_accuracy(shipped):
    assert shipped[1]["test_accuracy"] >= 0.993


def test_classifies_real_test_digits(shipped):
    net, _ = shipped
    data = np.load(FIXTURE, allow_pickle=False)
    images = torch.from_numpy(data["test_images"][:500]).unsqueeze(1).float() / 255  # (500, 1, 28, 28)
    labels = torch.from_numpy(data["test_labels"][:500])
    _, probs = extract(net, images)
    assert (probs.argmax(1) == labels).double().mean() >= 0.98


def test_feature_shapes_and_consistency(shipped):
    net, _ = shipped
    x = torch.rand(13, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    feats, probs = extract(net, x, batch_size=5)
    assert feats.shape == (13, FEATURE_DIM) and probs.shape == (13, 10)
    assert feats.dtype == probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(13))
    with torch.inference_mode():
        torch.testing.assert_close(feats, net.features(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(probs, net(x).softmax(1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        extract(net, torch.rand(2, 28, 28))


def test_corrupt_or_missing_weights_are_user_errors(tmp_path):
    shutil.copy(ASSETS_DIR / INFO, tmp_path / INFO)
    with pytest.raises(UserError, match="missing"):
        load_feature_net("cpu", assets_dir=tmp_path)
    blob = bytearray((ASSETS_DIR / WEIGHTS).read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(UserError, match="corrupt"):
        load_feature_net("cpu", assets_dir=tmp_path)
    (tmp_path / INFO).write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        load_feature_net("cpu", assets_dir=tmp_path)


def test_training_writes_loadable_weights(data_dir, tmp_path):
    """One epoch on the 512-image stand-in data: the files appear, load back, and match the info."""
    info = train_feature_net(data_dir, tmp_path, epochs=1, batch_size=64, progress=False)
    assert (tmp_path / WEIGHTS).is_file() and json.loads((tmp_path / INFO).read_text()) == info
    assert 0.0 <= info["test_accuracy"] <= 1.0 and info["epochs"] == 1
    net, loaded_info = load_feature_net("cpu", assets_dir=tmp_path)
    assert isinstance(net, FeatureNet) and loaded_info == info
    again = train_feature_net(data_dir, tmp_path / "again", epochs=1, batch_size=64, progress=False)
    assert again["sha256"] == info["sha256"]  # same seed, same weights
