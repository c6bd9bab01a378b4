"""Sample-quality evaluation (mnist_diffusion.evaluate) on real digits from tests/fixtures,
synthetic failures (noise, one digit only), and sample files in every accepted format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from rich.console import Console

from mnist_diffusion import evaluate
from mnist_diffusion.artifacts import MANIFEST, save_config, save_tensors, weights_metadata
from mnist_diffusion.errors import UserError
from mnist_diffusion.evaluate import RealData, evaluate_images, evaluate_run, load_samples, report_table
from mnist_diffusion.images import save_grid
from mnist_diffusion.model import build_model

FIXTURE = Path(__file__).parent / "fixtures" / "mnist_small.npz"
KID_SUBSETS = 10  # the default 100 is slow for a test


@pytest.fixture(scope="module")
def fixture_data():
    d = np.load(FIXTURE, allow_pickle=False)
    return {k: torch.from_numpy(v) for k, v in d.items()}


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


def _unit(images: torch.Tensor) -> torch.Tensor:
    return images.unsqueeze(1).float() / 255


def _eval(images, reference, **kw):
    return evaluate_images(images, data_dir=None, reference=reference, kid_subsets=KID_SUBSETS, **kw)


@pytest.fixture(scope="module")
def real_result(reference, held_out):
    images, labels = held_out
    return _eval(_unit(images), reference, labels=labels)


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
    result = _eval(_unit(ones), reference)
    model, floor = result["model"], result["real"]
    assert result["n"] == result["n_floor"] == len(ones)
    assert model["recall"] < 0.3 < floor["recall"] and model["coverage"] < 0.3 < floor["coverage"]
    assert model["precision"] > 0.5  # every image is a real digit ...
    hist = model["class_histogram"]
    assert hist[1] >= 0.95 * len(ones) and sum(hist) == len(ones)  # ... but all the same one
    assert model["inception_score"] < 1.5 and model["fid"] > 10 * floor["fid"]


def test_floor_is_cached_and_optional(reference, held_out, real_result):
    images = _unit(held_out[0])
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
    result = evaluate_run(run_dir, n_samples=20, sampler="ddim", steps=2, batch_size=10, reference=reference,
                          nll=True, nll_images=4, nll_timesteps=3, kid_subsets=2)  # fmt: skip
    on_disk = json.loads((run_dir / "eval.json").read_text())
    assert on_disk["model"]["fid"] == pytest.approx(result["model"]["fid"]) and on_disk["n"] == 20
    assert on_disk["sampling"]["sampler"] == "ddim" and on_disk["sampling"]["steps"] == 2
    assert on_disk["nll"]["n_images"] == 4 and on_disk["nll"]["estimate"] == "stratified"
    assert on_disk["nll"]["bpd"] > 0 and on_disk["seconds"]["sampling"] >= 0
    assert "eval.json" in json.loads((run_dir / MANIFEST).read_text())["files"]


# ----------------------------------------------------------------------------- load_samples


@pytest.fixture(scope="module")
def digits(fixture_data):
    """13 real digits as uint8 (13, 28, 28): a grid of them has an incomplete last row."""
    return fixture_data["test_images"][:13]


def test_load_safetensors_round_trip(tmp_path, digits):
    save_tensors(tmp_path / "a.safetensors", {"samples": _unit(digits), "other": torch.zeros(3)})
    torch.testing.assert_close(load_samples(tmp_path / "a.safetensors"), _unit(digits))
    save_tensors(tmp_path / "b.safetensors", {"x": digits})  # the only tensor, uint8 (N, 28, 28)
    torch.testing.assert_close(load_samples(tmp_path / "b.safetensors"), _unit(digits))


def test_load_npy_round_trip(tmp_path, digits):
    np.save(tmp_path / "a.npy", _unit(digits).numpy())
    torch.testing.assert_close(load_samples(tmp_path / "a.npy"), _unit(digits))
    np.save(tmp_path / "b.npy", digits.numpy())
    torch.testing.assert_close(load_samples(tmp_path / "b.npy"), _unit(digits))


def test_load_png_folder_round_trip(tmp_path, digits):
    for i, d in enumerate(digits):
        Image.fromarray(d.numpy(), mode="L").save(tmp_path / f"{i:03d}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    torch.testing.assert_close(load_samples(tmp_path), _unit(digits))


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_load_png_grid_round_trip(tmp_path, digits, scale):
    save_grid(_unit(digits), tmp_path / "grid.png", scale=scale)  # 4 x 4 tiles, the last 3 empty
    torch.testing.assert_close(load_samples(tmp_path / "grid.png"), _unit(digits))
    save_grid(_unit(digits[:10]), tmp_path / "row.png", nrow=10, scale=scale)
    torch.testing.assert_close(load_samples(tmp_path / "row.png"), _unit(digits[:10]))


def test_load_samples_refuses_bad_input(tmp_path, digits):
    cases = {}
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    cases["pickled.npy"] = "plain numpy"
    np.save(tmp_path / "shape.npy", np.zeros((4, 32, 32), np.float32))
    cases["shape.npy"] = "shape"
    np.save(tmp_path / "signed.npy", _unit(digits).numpy() * 2 - 1)
    cases["signed.npy"] = r"\(x \+ 1\) / 2"
    np.save(tmp_path / "ints.npy", digits.numpy().astype(np.int32))
    cases["ints.npy"] = "uint8"
    np.save(tmp_path / "nan.npy", np.full((2, 28, 28), np.nan, np.float32))
    cases["nan.npy"] = "NaN"
    (tmp_path / "trunc.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    cases["trunc.safetensors"] = "safetensors"
    Image.fromarray(np.zeros((90, 100), np.uint8), mode="L").save(tmp_path / "odd.png")
    cases["odd.png"] = "not a grid"
    (tmp_path / "fake.png").write_bytes(b"not a png at all")
    cases["fake.png"] = "cannot read"
    (tmp_path / "samples.pt").write_bytes(b"")
    cases["samples.pt"] = "unknown sample format"
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(np.zeros((56, 56), np.uint8), mode="L").save(big / "0.png")
    cases["big"] = "28x28"
    (tmp_path / "empty").mkdir()
    cases["empty"] = "no .png"
    cases["missing.npy"] = "no such file"
    colour = tmp_path / "colour"
    colour.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), np.uint8), mode="RGB").save(colour / "0.png")
    cases["colour"] = "greyscale"
    for name, message in cases.items():
        with pytest.raises(UserError, match=message):
            load_samples(tmp_path / name)


def test_grid_scale_detection():
    assert evaluate.grid_scale(32, 302) == [1]  # one row of 10 tiles
    assert evaluate.grid_scale(64, 604) == [2]
    assert evaluate.grid_scale(512, 512) == [16, 1]  # both fit: pixel content decides, largest first
    assert evaluate.grid_scale(100, 90) == []
