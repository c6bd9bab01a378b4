"""The command line, driven through Typer's CliRunner on a tiny model, as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.data.clusters import save_clusters
from mnist_diffusion.io import save_tensors
from mnist_diffusion.runs.store import load_config, weights_metadata

runner = CliRunner()
TINY = TINY_FLAGS


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *needles: str):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error:"), result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.fixture(scope="module")
def trained(tiny_run):
    """A tiny run trained through the CLI (conftest's ``tiny_run``): (artifacts dir, run folder)."""
    return tiny_run


@pytest.mark.parametrize("command", [[], ["train"], ["sample"], ["visualize-forward"], ["runs"], ["data", "download"]])
def test_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_python_dash_m_help():
    out = subprocess.run(
        [sys.executable, "-m", "mnist_diffusion", "--help"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for command in ("train", "sample", "visualize-forward", "runs"):
        assert command in out.stdout


def test_train_writes_a_complete_run(trained):
    artifacts, run_dir = trained
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model"]["channels"] == 8 and cfg["diffusion"]["timesteps"] == 50
    assert cfg["model"]["channel_mult"] == [1, 2, 2]
    assert json.loads((run_dir / "checkpoint.json").read_text())["step"] == 4
    assert Image.open(run_dir / "samples.png").format == "PNG"
    assert Image.open(run_dir / "loss.png").format == "PNG"


def test_sample_is_reproducible_and_saves_tensor(trained, tmp_path):
    artifacts, run_dir = trained
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    tensor = tmp_path / "s.safetensors"
    for out, seed, extra in ((a, 1, ["--save-tensor", tensor]), (b, 1, []), (c, 2, [])):
        result = invoke("sample", "--artifacts-dir", artifacts, "-n", 6, "-o", out, "--seed", seed, *extra)
        assert result.exit_code == 0, result.output
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    samples = load_file(tensor)["samples"]
    assert samples.shape == (6, 1, 28, 28) and samples.min() >= 0 and samples.max() <= 1
    assert Image.open(a).size == (2 * (6 * 30 + 2), 2 * 32)  # one row of 6 tiles, scale 2


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 5), ("dpmpp-2m", 5), ("dpmpp-2m-sde", 5)])
def test_sample_every_sampler_by_run_name(trained, tmp_path, sampler, steps):
    artifacts, run_dir = trained
    args = ["--steps", steps] if steps else []
    out = tmp_path / "g.png"
    result = invoke(
        "sample", "--run", run_dir.name, "--artifacts-dir", artifacts, "-n", 3, "-o", out, "--sampler", sampler, *args
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()


def test_sample_trajectory(trained, tmp_path):
    artifacts, run_dir = trained
    traj = tmp_path / "traj.png"
    result = invoke("sample", "--run", run_dir, "-n", 4, "-o", tmp_path / "g.png", "--trajectory", traj, "--steps", 10)
    assert result.exit_code == 0, result.output
    assert Image.open(traj).format == "PNG"


def test_sample_trajectory_of_several_batches(trained, tmp_path):
    # 6 samples in batches of 5: the trajectory shows the first batch's first samples only
    artifacts, run_dir = trained
    traj = tmp_path / "traj.png"
    result = invoke(
        "sample",
        "--run",
        run_dir,
        "-n",
        6,
        "--batch-size",
        5,
        "--steps",
        5,
        "-o",
        tmp_path / "g.png",
        "--trajectory",
        traj,
    )
    assert result.exit_code == 0, result.output
    assert Image.open(traj).format == "PNG"


def test_runs_lists_the_run(trained):
    artifacts, run_dir = trained
    result = runner.invoke(app, ["runs", "--artifacts-dir", str(artifacts)], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert run_dir.name in result.output and "done" in result.output  # whole, not cut to fit
    assert max(len(line) for line in result.output.splitlines()) <= 80


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="huge pages are asked for on Linux only")
@pytest.mark.parametrize(
    "command, allocator, asked", [("train", None, "1"), ("train", "system", None), ("sample", None, None)]
)
def test_train_asks_for_huge_pages_before_its_work(monkeypatch, tmp_path, command, allocator, asked):
    """train sets THP_MEM_ALLOC_ENABLE before anything else (torch reads it once, at its first CPU
    allocation, which --resume makes before the device is set up); sampling gains nothing from huge
    pages, and sample leaves the variable alone."""
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    for name in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    if allocator:
        monkeypatch.setenv("MNISTDIFF_ALLOCATOR", allocator)
    else:
        monkeypatch.delenv("MNISTDIFF_ALLOCATOR", raising=False)
    # Both fail on their first check, after the allocator's set-up and before any work.
    args = ["--conditional", "--clusters", "4"] if command == "train" else ["--run", "nonexistent"]
    result = runner.invoke(app, [command, *args, "--artifacts-dir", str(tmp_path)])
    assert result.exit_code == 1 and "Error:" in result.output
    assert os.environ.get("THP_MEM_ALLOC_ENABLE") == asked


def test_visualize_forward(data_dir, tmp_path):
    out = tmp_path / "forward.png"
    result = invoke(
        "visualize-forward",
        "-o",
        out,
        "--schedule",
        "linear",
        "--timesteps",
        300,
        "--digits",
        3,
        "--columns",
        5,
        "--data-dir",
        data_dir,
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out).format == "PNG"


def test_data_download_uses_existing_files(data_dir):
    result = invoke("data", "download", "--data-dir", data_dir, "--source", "files")
    assert result.exit_code == 0, result.output
    assert "existing files" in result.output


# ----------------------------------------------------------------------------- bad input


def test_zero_samples(trained, tmp_path):
    assert_one_line_error(invoke("sample", "--artifacts-dir", trained[0], "-n", 0), "-n must be at least 1")


def test_unknown_run(trained):
    assert_one_line_error(invoke("sample", "--artifacts-dir", trained[0], "--run", "nope"), "unknown run 'nope'")


def test_no_runs_yet(tmp_path):
    assert_one_line_error(invoke("sample", "--artifacts-dir", tmp_path), "no runs yet")


def test_bad_sampler_and_steps(trained, tmp_path):
    assert_one_line_error(invoke("sample", "--artifacts-dir", trained[0], "--sampler", "euler"), "--sampler")
    assert_one_line_error(invoke("sample", "--artifacts-dir", trained[0], "--steps", 51), "--steps")
    bad_spacing = invoke("sample", "--artifacts-dir", trained[0], "--spacing", 0)
    assert bad_spacing.exit_code == 2 and "--spacing" in bad_spacing.output and "Traceback" not in bad_spacing.output


def test_negative_epochs(tmp_path, data_dir):
    assert_one_line_error(
        invoke("train", "--epochs", -1, "--artifacts-dir", tmp_path, "--data-dir", data_dir),
        "epochs must not be negative",
    )
    assert not (tmp_path / "runs").exists()


def test_bad_channel_mult_and_guide_at(tmp_path):
    for flag, value, needle in (
        ("--channel-mult", "1,x,2", "comma-separated integers"),
        ("--channel-mult", "1,2", "3 positive entries"),
        ("--guide-at", "1.5", "guide_at must be in [0, 1)"),
    ):
        assert_one_line_error(invoke("train", flag, value, "--artifacts-dir", tmp_path), needle)


def test_bad_schedule_and_preset(tmp_path):
    assert_one_line_error(invoke("train", "--schedule", "quadratic", "--artifacts-dir", tmp_path), "schedule")
    assert_one_line_error(invoke("train", "--preset", "huge", "--artifacts-dir", tmp_path), "--preset")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(tmp_path, data_dir):
    assert_one_line_error(
        invoke("train", "--device", "cuda", "--artifacts-dir", tmp_path, "--data-dir", data_dir), "no CUDA"
    )


def test_missing_data_with_files_only(tmp_path):
    assert_one_line_error(
        invoke("data", "download", "--data-dir", tmp_path, "--source", "files"), "could not get MNIST"
    )


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    artifacts = tmp_path / "artifacts"
    target = artifacts / "runs" / run_dir.name
    target.mkdir(parents=True)
    for p in run_dir.iterdir():
        (target / p.name).write_bytes(p.read_bytes())
    return target


def test_truncated_weights(trained, tmp_path):
    run = copy_run(trained[1], tmp_path)
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(invoke("sample", "--run", run, "-o", tmp_path / "g.png"), "model.safetensors", "corrupt")


def test_garbage_weights(trained, tmp_path):
    run = copy_run(trained[1], tmp_path)
    (run / "model.safetensors").write_bytes(b"\xff" * 100)
    assert_one_line_error(invoke("sample", "--run", run, "-o", tmp_path / "g.png"), "model.safetensors")


def test_config_that_does_not_match_weights(trained, tmp_path):
    run = copy_run(trained[1], tmp_path)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["channels"] = 16
    (run / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(invoke("sample", "--run", run, "-o", tmp_path / "g.png"), "does not match")


def test_invalid_config_json(trained, tmp_path):
    run = copy_run(trained[1], tmp_path)
    (run / "config.json").write_text("{not json")
    assert_one_line_error(invoke("sample", "--run", run, "-o", tmp_path / "g.png"), "config.json")


def test_unwritable_output(trained, tmp_path):
    result = invoke("sample", "--artifacts-dir", trained[0], "-n", 2, "-o", tmp_path / "missing" / "g.png")
    assert_one_line_error(result, "missing")


def test_resume_refuses_config_flags(trained, data_dir):
    artifacts, run_dir = trained
    result = invoke(
        "train", "--resume", run_dir.name, "--lr", "0.1", "--artifacts-dir", artifacts, "--data-dir", data_dir
    )
    assert_one_line_error(result, "--lr")


def test_resume_through_the_cli(trained, data_dir, tmp_path):
    run = copy_run(trained[1], tmp_path)  # finished: 4 of its 4 steps
    artifacts = tmp_path / "artifacts"
    flags = ["--artifacts-dir", artifacts, "--data-dir", data_dir]
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    result = invoke("train", "--resume", run.name, *flags)  # no flags: the same plan, already done
    assert result.exit_code == 0, result.output
    assert "nothing to do" in " ".join(result.output.split())
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # not a byte changed
    assert [p.name for p in (artifacts / "runs").iterdir()] == [run.name]

    result = invoke("train", "--resume", run, "--max-steps", 6, *flags)  # a longer budget: a new run
    assert result.exit_code == 0, result.output
    child = Path(result.stdout.strip().splitlines()[-1])
    assert child.parent == run.parent and child != run
    assert json.loads((child / "run.json").read_text())["parent"] == {"run": run.name, "step": 4}
    assert json.loads((child / "checkpoint.json").read_text())["step"] == 6
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_ctrl_c_saves_checkpoint_and_the_printed_command_finishes_the_run(tmp_path, data_dir):
    """A real SIGINT to a real training process: exit 130, a resumable checkpoint, and a hint
    whose command, as printed, continues the run in place to its planned end."""
    artifacts = tmp_path / "artifacts"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "mnist_diffusion",
        "train",
        *TINY,
        "--epochs",
        "20",
        "--max-steps",
        "40",
        "--data-dir",
        str(data_dir),
        "--artifacts-dir",
        str(artifacts),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120  # a hang guard
    while time.time() < deadline and not list(artifacts.glob("runs/*/checkpoint.json")):
        time.sleep(0.1)  # the first checkpoint is written just before the first step
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    (run_dir,) = list((artifacts / "runs").iterdir())
    step = json.loads((run_dir / "checkpoint.json").read_text())["step"]
    assert 1 <= step < 40 and not (run_dir / "model.safetensors").exists()
    hint = " ".join(err.split()).split("Continue with: ")[1]
    assert hint == f"mnistdiff train --resume {run_dir.name} --artifacts-dir {artifacts}"
    result = invoke(*hint.split()[1:], "--data-dir", data_dir)
    assert result.exit_code == 0, result.output
    assert json.loads((run_dir / "checkpoint.json").read_text())["step"] == 40
    assert [p.name for p in (artifacts / "runs").iterdir()] == [run_dir.name]  # in place


# ----------------------------------------------------------------------------- eval, conditional


def test_eval_writes_eval_json_and_runs_shows_fid(trained, data_dir, tmp_path):
    artifacts, run_dir = trained
    run = copy_run(run_dir, tmp_path)
    result = runner.invoke(
        app,
        [
            "eval",
            "--run",
            str(run),
            "-n",
            "20",
            "--steps",
            "3",
            "--data-dir",
            str(data_dir),
            "--device",
            "cpu",
        ],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    assert "FID" in result.output and "real data" in result.output
    # the default preset's run: pixel clusters, and no guide yet after 4 steps
    assert "dpmpp-2m-sde, 3 evaluations, spacing 0.4, cluster guidance 1.6, seed 0" in " ".join(result.output.split())
    report = json.loads((run / "eval.json").read_text())
    assert report["n"] == 20 and report["model"]["fid"] > 0 and report["real"]["fid"] >= 0
    assert report["sampling"]["sampler"] == "dpmpp-2m-sde"  # the README's default
    assert report["sampling"]["steps"] == 3 and report["sampling"]["spacing"] == 0.4
    assert "eval.json" in json.loads((run / "manifest.json").read_text())["files"]
    listing = runner.invoke(app, ["runs", "--artifacts-dir", str(tmp_path / "artifacts")], terminal_width=200)
    fid = report["uncertainty"]["model"]["fid"]  # runs shows the FID +- half its 95% interval, at its N
    assert f"{report['model']['fid']:.3f}+-{(fid['high'] - fid['low']) / 2:.3f} @ 20" in listing.output


def test_eval_scores_outside_samples_as_json(trained, data_dir, tmp_path):
    artifacts, run_dir = trained
    tensor = tmp_path / "s.safetensors"
    assert (
        invoke(
            "sample",
            "--artifacts-dir",
            artifacts,
            "-n",
            12,
            "-o",
            tmp_path / "g.png",
            "--steps",
            2,
            "--save-tensor",
            tensor,
        ).exit_code
        == 0
    )
    result = invoke("eval", "--samples", tensor, "--json", "--data-dir", data_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n"] == 12 and sum(report["model"]["class_histogram"]) == 12


def test_eval_refuses_run_and_samples_together(trained, tmp_path):
    result = invoke("eval", "--run", trained[1], "--samples", tmp_path / "x.npy")
    assert_one_line_error(result, "not both")


def test_conditional_run_samples_requested_digits(data_dir, tmp_path):
    artifacts = tmp_path / "artifacts"
    result = invoke(
        "train", *TINY, "--conditional", "--max-steps", 2, "--data-dir", data_dir, "--artifacts-dir", artifacts
    )
    assert result.exit_code == 0, result.output
    for flags in (["--digit", 7], ["--labels", "0,1,2"], []):
        out = tmp_path / "c.png"
        result = invoke("sample", "--artifacts-dir", artifacts, "-n", 20, "-o", out, "--steps", 2, *flags)
        assert result.exit_code == 0, result.output
    # the default conditional grid: one row per digit, 2 per row for n=20
    assert Image.open(out).size == (2 * (2 * 30 + 2), 2 * (10 * 30 + 2))
    result = invoke("sample", "--artifacts-dir", artifacts, "-n", 8, "-o", out, "--steps", 2)
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == (2 * (8 * 30 + 2), 2 * 32)  # fewer than 10: one row, digits 0-7
    assert_one_line_error(invoke("sample", "--artifacts-dir", artifacts, "--labels", "1,x"), "--labels")


def test_digit_on_unconditional_run(trained):
    assert_one_line_error(invoke("sample", "--artifacts-dir", trained[0], "--digit", 3), "class-conditional")


def test_sample_precision(trained, tmp_path):
    artifacts, run_dir = trained
    out = {}
    for name, precision in (("a", "fp32"), ("b", "fp32"), ("c", "bf16")):
        out[name] = tmp_path / f"{name}.safetensors"
        result = invoke(
            "sample",
            "--artifacts-dir",
            artifacts,
            "-n",
            3,
            "-o",
            tmp_path / "g.png",
            "--steps",
            3,
            "--precision",
            precision,
            "--save-tensor",
            out[name],
        )
        assert result.exit_code == 0, result.output
    a, b, c = (load_file(out[k])["samples"] for k in "abc")
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - c).abs().max() < 0.2  # the same samples up to bf16 rounding
    result = invoke("sample", "--artifacts-dir", artifacts, "-o", tmp_path / "g.png", "--precision", "fp16")
    assert_one_line_error(result, "--precision")


def test_guidance_on_a_run_without_a_guide(data_dir, tmp_path):
    # --clusters 0 and 4 steps, before guide_at (40% of training): no guide.safetensors and no clusters
    artifacts = tmp_path / "artifacts"
    result = invoke(
        "train", *TINY, "--clusters", 0, "--max-steps", 4, "--data-dir", data_dir, "--artifacts-dir", artifacts
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = (artifacts / "runs").iterdir()
    assert not (run_dir / "guide.safetensors").exists() and not (run_dir / "clusters.safetensors").exists()
    out = tmp_path / "g.png"
    sample = ["sample", "--artifacts-dir", artifacts, "-n", 2, "-o", out, "--steps", 2]
    for flag, needle in (
        ("--autoguidance", "--autoguidance needs a run with a guide"),
        ("--label-guidance", "--label-guidance needs a run trained on digit labels"),
        ("--cluster-guidance", "--cluster-guidance needs a run trained on pixel clusters"),
        ("--guidance", "--autoguidance needs a run with a guide"),
    ):
        assert_one_line_error(invoke(*sample, flag, 3), needle)
    for flag in ("--autoguidance", "--label-guidance", "--cluster-guidance", "--guidance"):
        result = invoke(*sample, flag, 1)  # 1: off, which every run can do
        assert result.exit_code == 0, result.output
    result = invoke("sample", "--artifacts-dir", artifacts, "--autoguidance", -1)
    assert result.exit_code == 2 and "--autoguidance" in result.output  # Typer's own range check


def test_autoguidance_by_the_runs_guide(trained, data_dir, tmp_path):
    # the default preset: clusters as labels, autoguidance 2 by the guide plus cluster guidance 1.6
    artifacts, run_dir = trained
    run = copy_run(run_dir, tmp_path)
    weights = load_file(run / "model.safetensors")
    (run / "guide.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    paths = {}
    for w in (1, 2):  # a guide equal to the model: autoguidance changes nothing
        paths[w] = tmp_path / f"w{w}.safetensors"
        result = invoke(
            "sample",
            "--run",
            run,
            "-n",
            3,
            "-o",
            tmp_path / "g.png",
            "--steps",
            3,
            "--autoguidance",
            w,
            "--precision",
            "fp32",
            "--save-tensor",
            paths[w],
        )
        assert result.exit_code == 0, result.output
    # Not bit for bit: w = 2 runs the guide on a batch of another shape than the model's, and some
    # CPUs' kernels round those differently. A wrong formula moves the pixels by far more than 1e-4.
    unguided, guided = load_file(paths[1])["samples"], load_file(paths[2])["samples"]
    torch.testing.assert_close(guided, unguided, rtol=0, atol=1e-4)
    noisy = {k: v + 0.05 * torch.randn_like(v) for k, v in weights.items()}
    save_tensors(run / "guide.safetensors", noisy, weights_metadata(load_config(run)))
    for name, flags in (
        ("default", []),
        ("w2", ["--autoguidance", 2, "--cluster-guidance", 1.6]),
        ("w1", ["--autoguidance", 1]),
        ("s1", ["--cluster-guidance", 1]),
        ("legacy", ["--guidance", 1]),
    ):
        paths[name] = tmp_path / f"{name}.safetensors"
        result = invoke(
            "sample",
            "--run",
            run,
            "-n",
            3,
            "-o",
            tmp_path / "g.png",
            "--steps",
            3,
            *flags,
            "--save-tensor",
            paths[name],
        )
        assert result.exit_code == 0, result.output
    samples = {name: load_file(path)["samples"] for name, path in paths.items() if isinstance(name, str)}
    assert torch.equal(samples["default"], samples["w2"])  # the defaults are 2 and 1.6
    assert not torch.equal(samples["w2"], samples["w1"]) and not torch.equal(samples["w2"], samples["s1"])
    assert torch.equal(samples["legacy"], samples["w1"])  # the deprecated --guidance is autoguidance here
    legacy = invoke("sample", "--run", run, "-n", 1, "-o", tmp_path / "g.png", "--steps", 1, "--guidance", 1)
    assert "--guidance is deprecated" in " ".join(legacy.output.split()) and "--autoguidance" in legacy.output
    result = runner.invoke(
        app,
        ["eval", "--run", str(run), "-n", "20", "--steps", "2", "--data-dir", str(data_dir), "--device", "cpu"],
        terminal_width=200,
    )
    assert result.exit_code == 0, result.output
    caption = " ".join(result.output.split())
    assert "spacing 0.4, autoguidance 2 + cluster guidance 1.6, seed 0" in caption  # the table's caption
    sampling = json.loads((run / "eval.json").read_text())["sampling"]
    assert sampling["guidance"] == {"auto": 2.0, "labels": 1.0, "clusters": 1.6, "max_sigma": None}
    assert sampling["guidance_text"] == "autoguidance 2 + cluster guidance 1.6"


def test_train_warns_when_the_schedule_does_not_reach_pure_noise(data_dir, tmp_path):
    args = [
        "--channels",
        "8",
        "--batch-size",
        "16",
        "--max-steps",
        1,
        "--grid",
        0,
        "--data-dir",
        data_dir,
        "--artifacts-dir",
        tmp_path,
    ]
    noisy = invoke("train", *args, "--schedule", "linear", "--timesteps", 300)
    assert noisy.exit_code == 0, noisy.output
    assert "warning" in noisy.output and "0.22" in noisy.output
    clean = invoke("train", *args, "--schedule", "cosine", "--timesteps", 50)
    assert clean.exit_code == 0 and "warning" not in clean.output


def test_clustered_run_draws_its_clusters_and_guides_with_them(data_dir, tmp_path, monkeypatch):
    artifacts = tmp_path / "artifacts"
    flags = ["--data-dir", data_dir, "--artifacts-dir", artifacts]
    result = invoke("train", *TINY, "--clusters", 3, "--max-steps", 2, *flags)
    assert result.exit_code == 0, result.output
    (run_dir,) = (artifacts / "runs").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["model"]["num_classes"] == 3
    assert not (run_dir / "guide.safetensors").exists()  # 2 steps stop before guide_at: cluster CFG
    paths = {}
    for name, extra in (("a", []), ("b", []), ("w1", ["--cluster-guidance", 1])):
        paths[name] = tmp_path / f"{name}.safetensors"
        result = invoke(
            "sample",
            "--artifacts-dir",
            artifacts,
            "-n",
            6,
            "-o",
            tmp_path / "g.png",
            "--steps",
            2,
            "--save-tensor",
            paths[name],
            *extra,
        )
        assert result.exit_code == 0, result.output
    samples = {name: load_file(path)["samples"] for name, path in paths.items()}
    assert torch.equal(samples["a"], samples["b"]) and not torch.equal(samples["a"], samples["w1"])
    assert_one_line_error(invoke("sample", "--artifacts-dir", artifacts, "--digit", 3), "class-conditional")
    result = runner.invoke(
        app, ["eval", "-n", "20", "--steps", "2", "--device", "cpu", *map(str, flags)], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "spacing 0.4, cluster guidance 1.6, seed 0" in " ".join(result.output.split())
    sampling = json.loads((run_dir / "eval.json").read_text())["sampling"]
    assert sampling["guidance"]["clusters"] == 1.6 and sampling["labels"] == "drawn from the cluster sizes"
    assert "label_accuracy" not in json.loads((run_dir / "eval.json").read_text())["model"]  # not digits

    # sampling draws each sample's cluster from the clusters' training sizes
    from mnist_diffusion.config import SamplingConfig
    from mnist_diffusion.runs.loader import load_run
    from mnist_diffusion.sampling import generate as generate_module

    seen = []

    def spy(denoiser, shape, settings, **kw):
        seen.append(denoiser.labels.clone())
        return torch.zeros(shape)

    monkeypatch.setattr(generate_module, "sample", spy)
    save_clusters(run_dir, torch.full((512,), 2), 3)  # every training image in cluster 2
    run = load_run(run_dir, torch.device("cpu"))
    generate_module.generate(run, 7, SamplingConfig(steps=2))
    assert torch.equal(torch.cat(seen), torch.full((7,), 2))


def test_conditional_and_clusters_together(tmp_path, data_dir):
    result = invoke(
        "train", *TINY, "--conditional", "--clusters", 4, "--data-dir", data_dir, "--artifacts-dir", tmp_path
    )
    assert_one_line_error(result, "--clusters")


def test_eval_of_a_missing_samples_file_fails_before_fetching_mnist(tmp_path):
    data = tmp_path / "data"
    result = invoke("eval", "--samples", tmp_path / "nothere.npy", "--data-dir", data)
    assert_one_line_error(result, "nothere.npy")
    assert not data.exists()  # no download was attempted


# ----------------------------------------------------------------------------- every number bounded


def assert_refused(result, *needles: str):
    """A non-zero exit with a message (one Error: line, or Typer's usage error), not an exception."""
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    for needle in needles:
        assert needle in result.output, result.output


@pytest.mark.parametrize("seed", [2**63, 2**64, -1])
def test_a_seed_out_of_range_is_refused_by_every_command(seed, trained, tmp_path):
    where = ["--artifacts-dir", trained[0], "--device", "cpu", "-o", tmp_path / "out.png"]
    for command in (["sample", "-n", 1, "--steps", 2], ["interpolate", "--frames", 2, "--steps", 2]):
        assert_refused(invoke(*command, "--seed", seed, *where), "--seed")
    assert_refused(invoke("visualize-forward", "--seed", seed, "-o", tmp_path / "f.png"), "--seed")
    assert_refused(invoke("interpolate", "--seeds", f"0,{seed}", "--frames", 2, *where), "--seeds")
    artifacts = tmp_path / "artifacts"
    assert_refused(invoke("train", *TINY, "--seed", seed, "--artifacts-dir", artifacts), "--seed")
    assert not artifacts.exists()  # refused before a run folder with an unreadable config.json


def test_the_largest_seed_samples_and_interpolates(trained, tmp_path):
    where = ["--artifacts-dir", trained[0], "--device", "cpu"]
    result = invoke("sample", "-n", 2, "--steps", 2, "--seed", 2**63 - 1, "-o", tmp_path / "s.png", *where)
    assert result.exit_code == 0, result.output
    result = invoke("interpolate", "--frames", 2, "--steps", 2, "--seed", 2**63 - 1, "-o", tmp_path / "i.png", *where)
    assert result.exit_code == 0, result.output


def test_a_large_seed_trains_whose_derived_seeds_overflowed(data_dir, tmp_path):
    result = invoke(
        "train",
        *TINY,
        "--seed",
        20_000_000_000_000,
        "--max-steps",
        2,
        "--grid",
        0,
        "--no-compile",
        "--data-dir",
        data_dir,
        "--artifacts-dir",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert load_config(run_dir).train.seed == 20_000_000_000_000


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--lr", "inf"], "lr must be a finite number"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--guide-at", "nan"], "guide_at must be a finite number"),
        (["--channels", 8_000_000], "would need about"),
        (["--channel-mult", f"1,2,{2**40}"], "would need about"),
        (["--timesteps", 10_000_000_000_000], "timesteps must be at most 100,000"),
        (["--batch-size", 10**12], "would need about"),
        (["--epochs", 10**15], "epochs must be at most"),
        (["--max-steps", 2**41], "at most 2^40"),
        (["--grid", 10**14], "--grid 100000000000000 would need about"),
        (["--eval-every", 1, "--eval-samples", 10**14], "--eval-samples 100000000000000 would need about"),
    ],
)
def test_train_refuses_a_number_it_cannot_use_before_any_work(flags, needle, data_dir, tmp_path):
    result = invoke("train", *TINY, *flags, "--data-dir", data_dir, "--artifacts-dir", tmp_path / "artifacts")
    assert_one_line_error(result, needle)
    assert not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize(
    "command,needle",
    [
        (["sample", "-n", 10**12], "-n 1000000000000 would need about"),
        (["sample", "-n", 10**7, "--scale", 16], "use a smaller -n"),
        (["sample", "--steps", 10**13], "--steps must be between 1 and 100,000"),
        (["sample", "--init", "DRAWING", "--strength", "nan"], "--strength must be in (0, 1]"),
        (["eval", "-n", 10**12], "-n 1000000000000 would need about"),
        (["interpolate", "--frames", 10**12], "--frames 1000000000000 would need about"),
        (["inpaint", "--test-index", "0,1", "-n", 10**12], "-n 1000000000000 (2,000,000,000,000 digits) would need"),
        (["inpaint", "--test-index", 0, "--resample", 10**8], "more than 1,000,000"),
        (["inpaint", "--test-index", 0, "--jumps", 0], "--jumps and --resample must be at least 1"),
        (["visualize-forward", "--timesteps", 10**13], "timesteps must be at most 100,000"),
    ],
)
def test_sampling_commands_refuse_a_count_too_large_for_memory_before_any_work(
    command, needle, trained, data_dir, tmp_path
):
    drawing = tmp_path / "drawing.png"
    Image.new("L", (28, 28), 128).save(drawing)
    command = [str(drawing) if part == "DRAWING" else part for part in command]
    run, data, out = ["--artifacts-dir", trained[0]], ["--data-dir", data_dir], ["-o", tmp_path / "out.png"]
    where = {
        "sample": run + out,
        "interpolate": run + out,
        "eval": run + data,
        "inpaint": run + data + out,
        "visualize-forward": data + out,
    }[command[0]]
    result = invoke(*command, *where)
    assert_one_line_error(result, needle)
    assert not (tmp_path / "out.png").exists()


def test_an_allocation_failure_is_one_error_line():
    """MemoryError, torch's OutOfMemoryError and an allocator's RuntimeError anywhere in a command
    become one line with a hint; any other RuntimeError stays a bug with its traceback."""
    failures = {
        "python": MemoryError(),
        "cuda": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB (GPU 0; 79 GiB total)"),
        "cpu": RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 800000000000000 bytes. Error code 12"
        ),
        "other": RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
    }
    from mnist_diffusion.cli.app import user_errors

    def command(kind: str):
        raise failures[kind]

    import typer

    small = typer.Typer()
    small.command()(user_errors(command))
    for kind in ("python", "cuda", "cpu"):
        result = runner.invoke(small, [kind])
        assert_one_line_error(result, "out of memory", "smaller -n or --batch-size")
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert "DefaultCPUAllocator: can't allocate memory" in runner.invoke(small, ["cpu"]).output
    assert isinstance(runner.invoke(small, ["other"]).exception, RuntimeError)


def test_a_sampling_batch_too_large_for_memory_is_refused_before_any_work(trained, tmp_path):
    from mnist_diffusion.config import image_bytes, memory_bytes

    n = memory_bytes() // image_bytes(2) // 2  # the samples fit in memory; a batch of all of them does not
    result = invoke("sample", "-n", n, "--batch-size", n, "--artifacts-dir", trained[0], "-o", tmp_path / "out.png")
    assert_one_line_error(result, f"--batch-size {n} would need about", "use a smaller --batch-size")
