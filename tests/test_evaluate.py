"""Sample-quality evaluation (mnist_diffusion.evaluation.scoring) on real digits from
tests/fixtures, synthetic failures (noise, one digit only), and the eval report table."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
from conftest import tiny_config
from rich.console import Console
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.cli.tables import report_table
from mnist_diffusion.config import SamplingConfig
from mnist_diffusion.data.mnist import as_unit
from mnist_diffusion.errors import UserError
from mnist_diffusion.evaluation.cas import cas, classification_accuracy
from mnist_diffusion.evaluation.scoring import RealData, evaluate_images, evaluate_run
from mnist_diffusion.evaluation.uncertainty import difference
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


# ----------------------------------------------------------------------------- intervals, floors, CAS

UNCERTAINTY_KEYS = {"level", "method", "repeats", "bootstrap", "model", "real"}
INTERVAL_KEYS = {"se", "low", "high", "values"}
WITH_INTERVALS = {"fid", "kid_mean", "precision", "recall", "density", "coverage", "inception_score"}
WITH_INTERVALS |= {"mean_confidence", "confident_share"}


def test_real_images_carry_bootstrap_intervals_and_both_floors(real_result):
    u = real_result["uncertainty"]
    assert set(u) == UNCERTAINTY_KEYS and u["level"] == 0.95 and u["method"] == "bootstrap"
    assert u["repeats"] == 1 and u["bootstrap"] == 100
    assert set(u["model"]) == WITH_INTERVALS | {"label_accuracy"} and set(u["real"]) == set(u["model"])
    for key, iv in u["model"].items():
        assert set(iv) == INTERVAL_KEYS and iv["values"] is None and iv["se"] > 0, key
        assert iv["low"] < real_result["model"][key] < iv["high"], key
    assert u["model"]["fid"]["se"] < real_result["model"]["fid"]  # 1,000 samples pin FID down to within itself
    floors = real_result["floors"]
    assert floors["train_vs_test"] == real_result["real"]
    half = floors["test_vs_test"]  # 500 test digits against the other 500: real against real, one distribution
    assert half["fid"] < 1.5 * real_result["real"]["fid"] + 0.5 and half["label_accuracy"] > 0.98
    assert real_result["cas"] is None


def test_repeated_sets_report_their_mean_and_a_t_interval(reference, fixture_data):
    images, labels = as_unit(fixture_data["train_images"][1000:]), fixture_data["train_labels"][1000:]
    sets = [images[:300], images[300:600], images[600:900]]
    labels = torch.arange(300) % 10  # what a conditional model is asked for: labels no longer match the images
    result = _eval(sets, reference, labels=labels, seed=[0, 1, 2])
    singles = [_eval(s, reference, labels=labels, seed=i, bootstrap=0)["model"] for i, s in enumerate(sets)]
    u = result["uncertainty"]
    assert u["method"] == "repeats" and u["repeats"] == 3 and u["bootstrap"] is None and u["real"] is None
    fids = [m["fid"] for m in singles]
    assert u["model"]["fid"]["values"] == pytest.approx(fids)
    assert result["model"]["fid"] == pytest.approx(sum(fids) / 3)
    assert result["model"]["class_histogram"] == [
        sum(c) for c in zip(*(m["class_histogram"] for m in singles), strict=True)
    ]
    assert u["model"]["fid"]["low"] < result["model"]["fid"] < u["model"]["fid"]["high"]
    none = _eval(sets[0], reference, bootstrap=0)
    assert none["uncertainty"] is None and none["floors"]["test_vs_test"] is not None


def test_the_table_names_the_interval_and_shows_both_floors(real_result):
    console = Console(file=io.StringIO(), width=200)
    console.print(report_table(real_result))
    text = console.file.getvalue()
    half = real_result["uncertainty"]["model"]["fid"]
    assert f"{real_result['model']['fid']:.3f} ± {(half['high'] - half['low']) / 2:.3f}" in text
    assert "bootstrap over the 1,000 samples (100 resamples" in text and "test half vs half (500 each)" in text


def test_cas_of_real_digits_is_the_classifiers_own_accuracy(fixture_data):
    d = fixture_data
    test = (as_unit(d["test_images"]), d["test_labels"])
    half_a = (as_unit(d["train_images"][:1000]), d["train_labels"][:1000])
    half_b = (as_unit(d["train_images"][1000:]), d["train_labels"][1000:])
    scores = cas(half_b, half_a, test, epochs=3)
    samples, real = scores["samples"], scores["real"]
    print(f"CAS of 1,000 real digits: {samples['accuracy']:.3f}; trained on 1,000 others: {real['accuracy']:.3f}")
    assert samples["n"] == real["n"] == 1000 and real["accuracy"] > 0.9
    assert samples["low"] <= real["accuracy"] <= samples["high"]
    d = difference({"value": real["accuracy"], "se": real["se"]}, {"value": samples["accuracy"], "se": samples["se"]})
    assert d["low"] <= 0 <= d["high"]


def test_cas_of_one_digit_is_about_ten_percent(fixture_data):
    d = fixture_data
    ones = as_unit(d["train_images"][d["train_labels"] == 1])  # ~200 real "1"s, asked to be 0..9 in turn
    score = classification_accuracy((ones, torch.arange(len(ones)) % 10), (as_unit(d["test_images"]), d["test_labels"]))
    assert 0.04 < score["accuracy"] < 0.2 and score["low"] < 0.1 + 0.06


@pytest.fixture()
def tiny_copy(tmp_path, tiny_run):
    """An artifacts folder holding a copy of the shared tiny run (eval writes into its run)."""
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_run[0], artifacts)
    return artifacts


def _cli_eval(artifacts, data_dir, *args):
    argv = ["eval", "-n", "20", "--steps", "2", "--data-dir", str(data_dir), "--artifacts-dir", str(artifacts)]
    return CliRunner().invoke(app, [*argv, *args])


def test_eval_repeats_through_the_cli_writes_the_shared_shape(tiny_copy, data_dir):
    result = _cli_eval(tiny_copy, data_dir, "--repeats", "2", "--json")
    assert result.exit_code == 0, result.output
    (run_dir,) = (tiny_copy / "runs").iterdir()
    written = json.loads((run_dir / "eval.json").read_text())
    assert json.loads(result.output[result.output.index("{") :]) == written
    u = written["uncertainty"]
    assert set(u) == UNCERTAINTY_KEYS and (u["method"], u["repeats"], u["bootstrap"], u["real"]) == (
        "repeats",
        2,
        None,
        None,
    )
    assert set(u["model"]) == WITH_INTERVALS
    for key, iv in u["model"].items():
        assert set(iv) == INTERVAL_KEYS and len(iv["values"]) == 2, key
        assert iv["low"] <= written["model"][key] <= iv["high"] and sum(iv["values"]) / 2 == pytest.approx(
            written["model"][key]
        )
    assert written["sampling"]["repeat_seeds"] == [0, 1_000_003] and written["sampling"]["seed"] == 0
    assert (
        set(written["floors"]) == {"train_vs_test", "test_vs_test"}
        and written["floors"]["train_vs_test"] == written["real"]
    )
    assert written["floors"]["test_vs_test"]["fid"] >= 0 and written["cas"] is None


def test_an_unreadable_evals_jsonl_stops_eval_before_it_samples(tiny_copy, data_dir):
    (run_dir,) = (tiny_copy / "runs").iterdir()
    (run_dir / "evals.jsonl").mkdir()
    result = _cli_eval(tiny_copy, data_dir)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "evals.jsonl" in lines[0], result.output
    assert not (run_dir / "eval.json").exists()


def test_eval_bootstrap_through_the_cli(tiny_copy, data_dir):
    result = _cli_eval(tiny_copy, data_dir, "--bootstrap", "20")
    assert result.exit_code == 0, result.output
    assert "bootstrap over" in result.output and "±" in result.output
    (run_dir,) = (tiny_copy / "runs").iterdir()
    u = json.loads((run_dir / "eval.json").read_text())["uncertainty"]
    assert (u["method"], u["repeats"], u["bootstrap"]) == ("bootstrap", 1, 20) and set(u["real"]) == WITH_INTERVALS
    assert "--cas needs a class-conditional run" in _cli_eval(tiny_copy, data_dir, "--cas").output
    assert (
        "--bootstrap takes 0 (no intervals) or 2 to 10,000" in _cli_eval(tiny_copy, data_dir, "--bootstrap", "1").output
    )
    not_with_files = _cli_eval(tiny_copy, data_dir, "--samples", str(tiny_copy / "none.npy"), "--repeats", "2")
    assert not_with_files.exit_code != 0 and "not with --samples" in not_with_files.output
