"""Sample-quality evaluation (mnist_diffusion.evaluation.scoring) on real digits from
tests/fixtures, synthetic failures (noise, one digit only), and the eval report table."""

from __future__ import annotations

import io
import json

import pytest
import torch
from conftest import tiny_config
from rich.console import Console

from mnist_diffusion.cli.tables import report_table
from mnist_diffusion.config import SamplingConfig
from mnist_diffusion.data.mnist import as_unit
from mnist_diffusion.errors import UserError
from mnist_diffusion.evaluation.scoring import RealData, evaluate_images, evaluate_run
from mnist_diffusion.io import save_tensors
from mnist_diffusion.nets.unet import build_model
from mnist_diffusion.runs.store import MANIFEST, save_config, weights_metadata

KID_SUBSETS = 10  # the default 100 is slow for a test


@pytest.fixture(scope="module")
def reference(fixture_data):
    """1,000 real test images as the reference; the floor draws from the first 1,000 training images."""
    d = fixture_data
    train = (d["train_images"][:1000], d["train_labels"][:1000])
    return RealData(test=(d["test_images"], d["test_labels"]), train=train)


@pytest.fixture(scope="module")
def held_out(fixture_data):
    """1,000 real training images the floor never sees: a stand-in for a perfect model's samples."""
    return fixture_data["train_images"][1000:], fixture_data["train_labels"][1000:]


def _eval(images, reference, **kw):
    return evaluate_images(images, data_dir=None, reference=reference, kid_subsets=KID_SUBSETS, **kw)


@pytest.fixture(scope="module")
def real_result(reference, held_out):
    images, labels = held_out
    return _eval(as_unit(images), reference, labels=labels)


def test_real_images_score_at_the_floor(real_result):
    model, floor = real_result["model"], real_result["real"]
    assert real_result["n"] == real_result["n_floor"] == 1000 and real_result["n_reference"] == 1000
    assert model["fid"] < 1.5 * floor["fid"] + 0.5
    assert model["precision"] > 0.6 and model["recall"] > 0.6
    assert abs(model["precision"] - floor["precision"]) < 0.1 and abs(model["recall"] - floor["recall"]) < 0.1
    assert model["coverage"] > 0.8 and 0.7 < model["density"] < 1.3
    assert model["label_accuracy"] > 0.98 and floor["label_accuracy"] > 0.98
    assert model["inception_score"] > 6 and model["confident_share"] > 0.9
    assert min(model["class_histogram"]) > 60  # every digit shows up
    assert abs(model["kid_mean"]) < 0.01


def test_noise_scores_far_above_the_floor(reference, real_result):
    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    result = _eval(noise, reference)
    assert result["model"]["fid"] > 20 * real_result["real"]["fid"] + 10
    assert result["model"]["precision"] < 0.05 and result["model"]["coverage"] < 0.05
    assert result["model"]["kid_mean"] > 100 * max(real_result["real"]["kid_mean"], 1e-3)
    assert "label_accuracy" not in result["model"]


def test_a_single_digit_has_low_recall_and_one_spike(reference, fixture_data, real_result):
    ones = fixture_data["train_images"][fixture_data["train_labels"] == 1]  # about 200 real "1"s
    result = _eval(as_unit(ones), reference)
    model, floor = result["model"], result["real"]
    assert result["n"] == result["n_floor"] == len(ones)
    assert model["recall"] < 0.3 < floor["recall"] and model["coverage"] < 0.3 < floor["coverage"]
    assert model["precision"] > 0.5  # every image is a real digit ...
    hist = model["class_histogram"]
    assert hist[1] >= 0.95 * len(ones) and sum(hist) == len(ones)  # ... but all the same one
    assert model["inception_score"] < 1.5 and model["fid"] > 10 * floor["fid"]


def test_floor_is_cached_and_optional(reference, held_out, real_result):
    images = as_unit(held_out[0])
    again = _eval(images, reference, labels=held_out[1])
    assert again["real"] == real_result["real"] and again["model"] == real_result["model"]
    no_floor = _eval(images[:50], reference, n_floor=0)
    assert no_floor["real"] is None and no_floor["n_floor"] == 0
    with pytest.raises(UserError, match="at least"):
        _eval(images[:5], reference)


def test_report_table_lists_metrics_and_floor(real_result):
    console = Console(file=io.StringIO(), width=160)
    console.print(report_table(real_result))
    text = console.file.getvalue()
    assert "N = 1,000" in text and "FID" in text and "label accuracy" in text and "real data" in text
    assert f"{real_result['model']['fid']:.3f}" in text


def test_evaluate_run_writes_eval_json(tmp_path, reference):
    cfg = tiny_config()
    run_dir = tmp_path / "00000-tiny"
    run_dir.mkdir()
    save_config(run_dir, cfg)
    torch.manual_seed(0)
    save_tensors(run_dir / "model.safetensors", build_model(cfg.model).state_dict(), weights_metadata(cfg))
    result = evaluate_run(
        run_dir,
        SamplingConfig(sampler="ddim", steps=2, batch_size=10),
        n_samples=20,
        reference=reference,
        nll_images=4,
        nll_timesteps=3,
        kid_subsets=2,
    )
    on_disk = json.loads((run_dir / "eval.json").read_text())
    assert on_disk["model"]["fid"] == pytest.approx(result["model"]["fid"]) and on_disk["n"] == 20
    assert on_disk["sampling"]["sampler"] == "ddim" and on_disk["sampling"]["steps"] == 2
    assert on_disk["nll"]["n_images"] == 4 and on_disk["nll"]["estimate"] == "stratified"
    assert on_disk["nll"]["bpd"] > 0 and on_disk["seconds"]["sampling"] >= 0
    assert "eval.json" in json.loads((run_dir / MANIFEST).read_text())["files"]
