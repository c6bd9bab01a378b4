"""Every flag reaches what it names. Each command's table has one row per parameter of the Typer
command, read from the command itself, so a flag added later without a row fails here.

A row runs the command as a user types it (CliRunner) with that flag at a non-default value,
and checks where the value lands: the run's config.json, its run.json or checkpoint, the
settings a sampling command records (tensor metadata, eval.json, a picture's text), a file
the flag asks for, or the one-line error of a value that cannot work on this machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from conftest import TINY_FLAGS, fake_digits
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.config import PRESETS, SamplingConfig
from mnist_diffusion.data.mnist import raw_dir, write_idx_images, write_idx_labels
from mnist_diffusion.io import save_tensors
from mnist_diffusion.pictures.grids import grid_image, picture_text
from mnist_diffusion.pictures.inputs import parse_mask
from mnist_diffusion.runs.loader import load_run
from mnist_diffusion.runs.store import load_config, read_metrics, weights_metadata
from mnist_diffusion.runtime import cxx_compiler
from mnist_diffusion.sampling.editing import interpolate
from mnist_diffusion.seeds import derive_seed

runner = CliRunner()
BASE = [*TINY_FLAGS[:-2], "--grid", "0", "--max-steps", "2"]  # TINY_FLAGS ends with its --grid


def params_of(command: str) -> set[str]:
    """The names of a command's Typer parameters, as the CLI declares them."""
    click_app = typer.main.get_command(app)
    return {p.name for p in click_app.commands[command].params}


class Train:
    """`train` in a fresh artifacts folder, with the tiny model unless told otherwise."""

    def __init__(self, tmp_path: Path, data_dir: Path):
        self.artifacts, self.data_dir = tmp_path / "artifacts", data_dir

    def __call__(self, *args: str, base: bool = True, ok: bool = True):
        where = ["--data-dir", str(self.data_dir), "--artifacts-dir", str(self.artifacts)]
        result = runner.invoke(app, ["train", *(BASE if base else []), *args, *where])
        if ok:
            assert result.exit_code == 0, result.output
        return result

    @property
    def run(self) -> Path:
        return sorted((self.artifacts / "runs").iterdir())[-1]

    def config(self):
        return load_config(self.run)

    def json(self, name: str) -> dict:
        return json.loads((self.run / name).read_text())

    def done_at(self) -> int:
        return next(r["step"] for r in read_metrics(self.run) if r.get("done"))


def error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and "Traceback" not in result.output and lines[-1].startswith("Error:"), result.output
    return lines[-1]


@dataclass(frozen=True)
class Row:
    """``train BASE ARGS`` (without BASE if not ``base``), then ``got(t, result) == want``."""

    args: tuple[str, ...]
    got: Callable[[Train, object], object]
    want: object = True
    base: bool = True
    ok: bool = True  # the command succeeds (else ``got`` reads its error line)

    def check(self, t: Train) -> None:
        result = t(*self.args, base=self.base, ok=self.ok)
        assert self.got(t, result) == self.want, result.output


def _resume(t: Train) -> None:
    t()
    parent = t.run
    result = t("--resume", parent.name, "--max-steps", "3", base=False)
    assert t.run != parent and t.json("run.json")["parent"] == {"run": parent.name, "step": 2}
    assert "continues as" in result.output and t.done_at() == 3


def _compile(t: Train) -> None:
    if cxx_compiler() is None:
        pytest.skip("torch.compile needs a C++ compiler for the CPU")
    t("--compile", "--max-steps", "1")
    assert t.json("checkpoint.json")["compiled"] is True


def _grid(t: Train) -> None:
    t("--grid", "4")
    small = Image.open(t.run / "samples.png").size
    t("--grid", "8")
    assert Image.open(t.run / "samples.png").size[0] > small[0]  # a row of 8 digits, not of 4
    t("--grid", "0")
    assert not (t.run / "samples.png").exists()


def _data_dir(t: Train) -> None:
    """Another data folder, of 64 training images: 4 steps of 16 to an epoch."""
    raw = raw_dir(t.artifacts.parent / "other-data")
    raw.mkdir(parents=True)
    for split, n in (("train", 64), ("t10k", 16)):
        x, y = fake_digits(n, 5)
        write_idx_images(raw / f"{split}-images-idx3-ubyte", x)
        write_idx_labels(raw / f"{split}-labels-idx1-ubyte", y)
    result = runner.invoke(
        app, ["train", *BASE, "--data-dir", str(raw.parent.parent), "--artifacts-dir", str(t.artifacts)]
    )
    assert result.exit_code == 0, result.output
    assert t.json("checkpoint.json")["steps_per_epoch"] == 4


def config(get: Callable) -> Callable[[Train, object], object]:
    return lambda t, result: get(t.config())


TRAIN: dict[str, Row | Callable[[Train], None]] = {
    "epochs": Row(("--epochs", "2"), config(lambda c: c.train.epochs), 2),
    "batch_size": Row(("--batch-size", "8"), config(lambda c: c.train.batch_size), 8),
    "lr": Row(("--lr", "0.001"), config(lambda c: c.train.lr), 0.001),
    "timesteps": Row(("--timesteps", "40"), config(lambda c: c.diffusion.timesteps), 40),
    "schedule": Row(("--schedule", "linear"), config(lambda c: c.diffusion.schedule), "linear"),
    "prediction": Row(("--prediction", "eps"), config(lambda c: c.diffusion.prediction), "eps"),
    "loss_weighting": Row(("--loss-weighting", "none"), config(lambda c: c.diffusion.loss_weighting), "none"),
    "preset": Row(
        (
            "--preset",
            "seed",
            "--channels",
            "8",
            "--timesteps",
            "50",
            "--batch-size",
            "16",
            "--max-steps",
            "1",
            "--grid",
            "0",
        ),
        config(lambda c: (c.preset, c.model.arch)),
        ("seed", "seed"),
        base=False,
    ),
    "channels": Row(("--channels", "16"), config(lambda c: c.model.channels), 16),
    "channel_mult": Row(("--channel-mult", "1,1,2"), config(lambda c: c.model.channel_mult), (1, 1, 2)),
    "conditional": Row(("--conditional",), config(lambda c: (c.model.num_classes, c.train.clusters)), (10, 0)),
    "clusters": Row(
        ("--clusters", "4"),
        lambda t, r: (t.config().model.num_classes, (t.run / "clusters.safetensors").is_file()),
        (4, True),
    ),
    "guide_at": Row(("--guide-at", "0.5"), config(lambda c: c.train.guide_at), 0.5),
    "seed": Row(("--seed", "7"), config(lambda c: c.train.seed), 7),
    "steps": Row(("--steps", "3", "--max-steps", "0"), lambda t, r: (t.config().train.steps, t.done_at()), (3, 3)),
    "time_budget": Row(
        ("--time-budget", "3s", "--max-steps", "0"), lambda t, r: t.json("run.json")["time_budget"]["seconds"], 3.0
    ),
    "max_steps": Row(("--max-steps", "3"), lambda t, r: t.done_at(), 3),
    "precision": Row(("--precision", "fp32"), config(lambda c: c.train.precision), "fp32"),
    "run_name": Row(("--run-name", "named"), lambda t, r: t.run.name.split("-", 1)[1], "named"),
    "resume": _resume,
    "grid": _grid,
    "compile": _compile,
    "cuda_graphs": Row(
        ("--cuda-graphs", "--device", "cpu"), lambda t, r: "--cuda-graphs needs a CUDA GPU" in error(r), ok=False
    ),
    "sample_every": Row(
        ("--sample-every", "1"),
        lambda t, r: sorted(p.name for p in (t.run / "progress").iterdir()),
        ["samples-00000001.png", "samples-00000002.png"],
    ),
    "eval_every": Row(
        ("--eval-every", "2", "--eval-samples", "10"),
        lambda t, r: [x["step"] for x in read_metrics(t.run) if "fid" in x],
        [2],
    ),
    "eval_samples": Row(
        ("--eval-every", "2", "--eval-samples", "12"),
        lambda t, r: [x["fid_n"] for x in read_metrics(t.run) if "fid" in x],
        [12],
    ),
    "tensorboard": Row(("--tensorboard",), lambda t, r: any((t.run / "tensorboard").iterdir())),
    "device": Row(("--device", "cuda"), lambda t, r: "CUDA" in error(r), ok=False),
    "artifacts_dir": Row((), lambda t, r: t.run.parent.parent == t.artifacts and (t.artifacts / "latest").is_file()),
    "data_dir": _data_dir,
}


def test_every_train_flag_has_a_row():
    assert params_of("train") == set(TRAIN)


@pytest.mark.parametrize("flag", sorted(TRAIN))
def test_train_flag_reaches_what_it_names(flag, tmp_path, data_dir):
    if flag == "tensorboard":
        pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    t, row = Train(tmp_path, data_dir), TRAIN[flag]
    row.check(t) if isinstance(row, Row) else row(t)


def test_train_without_channel_mult_takes_the_default_presets_widths(tmp_path, data_dir):
    """No --channel-mult: the run's network is the default preset's, 16/32/64 with --channels 16."""
    t = Train(tmp_path, data_dir)
    t("--timesteps", "50", "--batch-size", "16", "--max-steps", "1", "--grid", "0", base=False)
    cfg = t.config()
    assert cfg.model.channel_mult == PRESETS["default"].model.channel_mult == (1, 2, 4)
    assert [cfg.model.channels * m for m in cfg.model.channel_mult] == [16, 32, 64]


# ----------------------------------------------------------------------------- sampling and editing commands
#
# The same for `sample`, `eval`, `inpaint`, `interpolate` and `invert`, run on three tiny runs: "plain" (the
# default preset: 40 pixel clusters), "guided" (the same with a guide, for autoguidance) and "conditional"
# (digit labels), each named by --run unless a row says otherwise. A sampling flag must land in the settings
# the command records: the --save-tensor metadata of `sample` and `inpaint`, eval.json of `eval`, and the
# text of the picture of `interpolate` and `invert`; the pictures of all four say how they were made.


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run, data_dir) -> Path:
    """An artifacts folder of three tiny runs: 00001-plain (a copy of ``tiny_run``), 00002-guided (the same
    with a guide: noisy copies of its weights) and 00003-conditional (trained here, the latest)."""
    artifacts = tmp_path_factory.mktemp("flag-runs")
    for name in ("00001-plain", "00002-guided"):
        target = artifacts / "runs" / name
        target.mkdir(parents=True)
        for p in tiny_run[1].iterdir():
            (target / p.name).write_bytes(p.read_bytes())
    guided = artifacts / "runs" / "00002-guided"
    weights = load_file(guided / "model.safetensors")
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0)) for k, v in weights.items()}
    save_tensors(guided / "guide.safetensors", noisy, weights_metadata(load_config(guided)))
    result = runner.invoke(
        app,
        [
            "train",
            *TINY_FLAGS,
            "--conditional",
            "--max-steps",
            "2",
            "--run-name",
            "conditional",
            "--data-dir",
            str(data_dir),
            "--artifacts-dir",
            str(artifacts),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (artifacts / "runs" / "00003-conditional").is_dir()
    return artifacts


def data_digits() -> np.ndarray:
    """The test split of conftest's ``data_dir``, uint8 (128, 28, 28)."""
    return fake_digits(128, 1)[0]


OTHER_TEST = 16  # test digits of the other data folder


def other_data(root: Path) -> Path:
    """Another data folder, of 64 training and OTHER_TEST test images unlike conftest's ``data_dir``."""
    raw = raw_dir(root / "other-data")
    raw.mkdir(parents=True)
    for split, n, seed in (("train", 64, 5), ("t10k", OTHER_TEST, 6)):
        x, y = fake_digits(n, seed)
        write_idx_images(raw / f"{split}-images-idx3-ubyte", x)
        write_idx_labels(raw / f"{split}-labels-idx1-ubyte", y)
    return raw.parent.parent


class Tool:
    """A sampling or editing command on one of the module's runs, with tiny settings (BASE) unless a row
    gives the flag itself. ``{tmp}`` in an argument is this test's folder, which holds ``digit.png``
    (test digit 5), ``digit0.png`` (test digit 0), ``drawing.png`` and ``other-data`` (:func:`other_data`)."""

    BASE = {
        "sample": {"-n": "2", "-o": "{tmp}/out.png", "--save-tensor": "{tmp}/out.safetensors"},
        "inpaint": {
            "--test-index": "0",
            "-n": "2",
            "--jumps": "1",
            "--resample": "1",
            "-o": "{tmp}/out.png",
            "--save-tensor": "{tmp}/out.safetensors",
        },
        "interpolate": {"--frames": "2", "-o": "{tmp}/out.png"},
        "invert": {"--test-index": "0", "-o": "{tmp}/out.png"},
        "eval": {"-n": "10"},
    }
    SAMPLING = {"--steps": "2", "--batch-size": "2", "--precision": "fp32", "--device": "cpu"}

    def __init__(self, command: str, tmp_path: Path, artifacts: Path, data_dir: Path):
        self.command, self.tmp, self.artifacts, self.data_dir = command, tmp_path, artifacts, data_dir
        self.out, self.tensor = tmp_path / "out.png", tmp_path / "out.safetensors"
        digits = data_digits()
        for name, pixels in (("digit", digits[5]), ("digit0", digits[0]), ("drawing", 255 - digits[9])):
            Image.fromarray(pixels, mode="L").save(tmp_path / f"{name}.png")
        other_data(tmp_path)
        self.run_name = ""

    def __call__(self, *args: str, run: str = "plain", ok: bool = True, drop: tuple[str, ...] = ()):
        where = {"--run": run, "--artifacts-dir": str(self.artifacts)}
        if self.command != "sample":
            where["--data-dir"] = str(self.data_dir)
        given = {**self.BASE[self.command], **self.SAMPLING, **where}
        kept = {flag: value for flag, value in given.items() if flag not in args and flag not in drop}
        base = [part for flag, value in kept.items() for part in (flag, value)]
        argv = [arg.replace("{tmp}", str(self.tmp)) for arg in (*base, *args)]
        if self.command == "eval":  # eval writes eval.json into the run: none left from another row
            for run_dir in (self.artifacts / "runs").iterdir():
                (run_dir / "eval.json").unlink(missing_ok=True)
        used = argv[argv.index("--run") + 1] if "--run" in argv else "conditional"  # the latest
        self.run_name = next(p.name for p in (self.artifacts / "runs").iterdir() if p.name.endswith("-" + used))
        result = runner.invoke(app, [self.command, *argv])
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def made(self, path: Path | None = None) -> dict:
        """What a picture says of how it was made."""
        return json.loads(picture_text(path or self.out)["mnistdiff"])

    def metadata(self, path: Path | None = None) -> dict[str, str]:
        with safe_open(path or self.tensor, "pt") as f:
            return dict(f.metadata())

    def tensors(self, path: Path | None = None) -> dict[str, torch.Tensor]:
        return load_file(path or self.tensor)

    def eval_json(self, run: str | None = None) -> dict:
        return json.loads((self.artifacts / "runs" / (run or self.run_name) / "eval.json").read_text())

    def sampling(self) -> dict:
        """The sampling settings the command recorded."""
        if self.command in ("sample", "inpaint"):
            return json.loads(self.metadata()["sampling"])
        if self.command == "eval":
            return self.eval_json()["sampling"]
        return self.made()["sampling"]


@dataclass(frozen=True)
class Use:
    """``command BASE ARGS`` on ``run`` (without the BASE flags in ``drop``), then ``got(t, result) == want``."""

    args: tuple[str, ...]
    got: Callable[[Tool, object], object]
    want: object = True
    run: str = "plain"
    ok: bool = True  # the command succeeds (else ``got`` reads its error line)
    drop: tuple[str, ...] = ()

    def check(self, t: Tool) -> None:
        result = t(*self.args, run=self.run, ok=self.ok, drop=self.drop)
        assert self.got(t, result) == self.want, result.output


def setting(*keys: str) -> Callable[[Tool, object], object]:
    """The recorded sampling setting at ``keys``, such as ("guidance", "auto")."""

    def got(t: Tool, result) -> object:
        value = t.sampling()
        for key in keys:
            value = value[key]
        return value

    return got


def tile(path: Path, index: int = 0, scale: int = 2) -> np.ndarray:
    """Tile ``index`` of the first row of a grid written at ``scale``, uint8 (28, 28)."""
    pixels = np.asarray(Image.open(path))[::scale, ::scale]
    left = 2 + 30 * index
    return pixels[2:30, left : left + 28]


def size(t: Tool, result) -> tuple[int, int]:
    return Image.open(t.out).size


def no_cuda(flag: str) -> Use:
    """A row for a flag that cannot work on this CPU-only machine: its one-line error."""
    if flag == "--cuda-graphs":
        return Use(("--cuda-graphs",), lambda t, r: "--cuda-graphs needs a CUDA GPU" in error(r), ok=False)
    return Use(("--device", "cuda"), lambda t, r: "CUDA" in error(r), ok=False)


def sampling_rows(without: tuple[str, ...] = ()) -> dict[str, Use]:
    """The rows of the sampling flags every command shares, each checked in the settings it records."""
    rows = {
        "sampler": Use(("--sampler", "ddim"), setting("sampler"), "ddim"),
        "steps": Use(("--steps", "3"), setting("steps"), 3),
        "spacing": Use(("--spacing", "0.7"), setting("spacing"), 0.7),
        "eta": Use(("--sampler", "ddim", "--eta", "0.5"), setting("eta"), 0.5),
        "seed": Use(("--seed", "7"), setting("seed"), 7),
        "autoguidance": Use(("--autoguidance", "1.5"), setting("guidance", "auto"), 1.5, run="guided"),
        "label_guidance": Use(("--label-guidance", "2.5"), setting("guidance", "labels"), 2.5, run="conditional"),
        "cluster_guidance": Use(("--cluster-guidance", "1.2"), setting("guidance", "clusters"), 1.2),
        "guidance_max_sigma": Use(("--guidance-max-sigma", "5"), setting("guidance", "max_sigma"), 5.0),
        "guidance": Use(
            ("--guidance", "1.3"),
            lambda t, r: (setting("guidance", "auto")(t, r), "for this run it means --autoguidance" in r.output),
            (1.3, True),
            run="guided",
        ),
        "precision": Use(("--precision", "bf16"), setting("precision"), "bf16"),
        "batch_size": Use(("--batch-size", "1"), setting("batch_size"), 1),
        "cuda_graphs": no_cuda("--cuda-graphs"),
    }
    return {name: row for name, row in rows.items() if name not in without}


def where_rows(read_run: Callable[[Tool], str]) -> dict[str, Use]:
    """--run, --device and --artifacts-dir; ``read_run`` reads the name of the run the command used."""
    return {
        "run": Use(("--run", "guided"), lambda t, r: read_run(t), "00002-guided"),
        "device": no_cuda("--device"),
        "artifacts_dir": Use((), lambda t, r: read_run(t), "00003-conditional", drop=("--run",)),  # the latest
    }


def _sample_trajectory(t: Tool) -> None:
    t("--trajectory", "{tmp}/t.png")
    assert t.made(t.tmp / "t.png") == t.made()  # the grid's settings
    t("--trajectory", "{tmp}/t.gif")
    with Image.open(t.tmp / "t.gif") as gif:
        assert gif.n_frames == 2  # a frame per step, at most TRAJECTORY_FRAMES
    assert t.made(t.tmp / "t.gif") == t.made()


SAMPLE: dict[str, Use | Callable[[Tool], None]] = {
    **where_rows(lambda t: t.metadata()["run"]),
    "n": Use(("-n", "3"), lambda t, r: len(t.tensors()["samples"]), 3),
    "output": Use(("-o", "{tmp}/other.png"), lambda t, r: t.made(t.tmp / "other.png")["run"], "00001-plain"),
    "nrow": Use(("--nrow", "1"), size, (64, 124)),  # 2 digits in a column, (1 x 30 + 2) x (2 x 30 + 2) at scale 2
    "scale": Use(("--scale", "3"), size, (186, 96)),  # (2 x 30 + 2) x (30 + 2) at scale 3
    "save_tensor": Use(
        ("--save-tensor", "{tmp}/other.safetensors"),
        lambda t, r: list(t.tensors(t.tmp / "other.safetensors")["samples"].shape),
        [2, 1, 28, 28],
    ),
    "digit": Use(("--digit", "3"), lambda t, r: t.made()["labels"], [3, 3], run="conditional"),
    "labels": Use(("--labels", "1,2"), lambda t, r: t.made()["labels"], [1, 2], run="conditional"),
    "trajectory": _sample_trajectory,
    "init": Use(
        ("--init", "{tmp}/drawing.png"),
        lambda t, r: (json.loads(t.metadata()["sdedit"]), t.made()["sdedit"]),
        ({"strength": 0.6}, {"strength": 0.6}),
    ),
    "strength": Use(
        ("--init", "{tmp}/drawing.png", "--strength", "0.3"),
        lambda t, r: (json.loads(t.metadata()["sdedit"]), t.made()["sdedit"]),
        ({"strength": 0.3}, {"strength": 0.3}),
    ),
    **sampling_rows(),
}


def _inpaint_image(t: Tool) -> None:
    t("--image", "{tmp}/digit.png", drop=("--test-index",))
    assert torch.equal(t.tensors()["originals"][0, 0], torch.from_numpy(data_digits()[5]) / 255)


def _inpaint_data_dir(t: Tool) -> None:
    t("--data-dir", "{tmp}/other-data")
    assert torch.equal(t.tensors()["originals"][0, 0], torch.from_numpy(fake_digits(OTHER_TEST, 6)[0][0]) / 255)


def _mask(t: Tool, result) -> tuple[bool, bool]:
    top = parse_mask("top")[0, 0]
    (bits,) = t.made()["inpainting"]["missing"]  # one digit
    recorded = np.unpackbits(np.frombuffer(bytes.fromhex(bits), np.uint8)).reshape(28, 28)
    return np.array_equal(recorded, top.numpy()), torch.equal(t.tensors()["missing"][0, 0], top.to(torch.uint8))


def _match_clusters(t: Tool) -> None:
    """Recorded, guided towards the matched clusters at sample's scale; a run without clusters: one line.
    Left out, on for a clustered run where --data-dir holds the training digits, with 20 steps and one walk;
    off without them (one line says so), and with --no-match-clusters: no cluster, 50 steps (the run's
    T), r = 5."""
    result = t("--match-clusters")
    assert inpainting("match_clusters")(t, result) == (True, True)
    assert setting("guidance", "clusters")(t, result) == 1.6
    assert "needs a run trained on pixel clusters" in error(t("--match-clusters", run="conditional", ok=False))
    defaults = ("--steps", "--resample")
    result = t(drop=defaults)
    assert inpainting("match_clusters")(t, result) == (True, True) and inpainting("resample")(t, result) == (1, 1)
    assert (setting("steps")(t, result), setting("guidance", "clusters")(t, result)) == (20, 1.6)
    result = t("--no-match-clusters", drop=defaults)
    assert inpainting("match_clusters")(t, result) == (False, False) and inpainting("resample")(t, result) == (5, 5)
    assert (setting("steps")(t, result), setting("guidance", "clusters")(t, result)) == (50, 1.0)
    assert "clusters not matched" not in result.output
    drawn = ("--image", "{tmp}/digit.png", "--data-dir", "{tmp}/no-data")  # a drawn digit needs no MNIST
    result = t(*drawn, drop=("--test-index", *defaults))
    assert inpainting("match_clusters")(t, result) == (False, False) and setting("steps")(t, result) == 50
    assert "clusters not matched, none drawn: no MNIST training digits in" in result.output
    assert not (t.tmp / "no-data").exists()  # nothing fetched
    result = t("--data-dir", "{tmp}/other-data", drop=defaults)  # not the digits the run was clustered on
    assert inpainting("match_clusters")(t, result) == (False, False)
    assert "clusters not matched, none drawn: run 00001-plain was clustered on 512 training images" in result.output
    result = t(*drawn, run="conditional", drop=("--test-index", *defaults))  # no clusters: nothing to say
    assert inpainting("match_clusters")(t, result) == (False, False) and "not matched" not in result.output


def inpainting(key: str) -> Callable[[Tool, object], object]:
    """An inpainting setting, as the tensor's metadata and the picture record it."""
    return lambda t, r: (json.loads(t.metadata()["inpainting"])[key], t.made()["inpainting"][key])


INPAINT: dict[str, Use | Callable[[Tool], None]] = {
    **where_rows(lambda t: t.metadata()["run"]),
    "image": _inpaint_image,
    "test_index": Use(
        ("--test-index", "5"),
        lambda t, r: torch.equal(t.tensors()["originals"][0, 0], torch.from_numpy(data_digits()[5]) / 255),
    ),
    "mask": Use(("--mask", "top"), _mask, (True, True)),
    "n": Use(("-n", "3"), lambda t, r: (len(t.tensors()["samples"]), *inpainting("n")(t, r)), (3, 3, 3)),
    "digit": Use(("--digit", "3"), inpainting("digit"), (3, 3), run="conditional"),
    "jumps": Use(("--jumps", "2"), inpainting("jumps"), (2, 2)),
    "resample": Use(("--resample", "2"), inpainting("resample"), (2, 2)),
    "match_clusters": _match_clusters,
    "output": Use(("-o", "{tmp}/other.png"), lambda t, r: t.made(t.tmp / "other.png")["run"], "00001-plain"),
    "scale": Use(("--scale", "3"), size, (366, 96)),  # original, masked and 2 completions: (4 x 30 + 2) x 32, x 3
    "save_tensor": Use(
        ("--save-tensor", "{tmp}/other.safetensors"),
        lambda t, r: list(t.tensors(t.tmp / "other.safetensors")["samples"].shape),
        [2, 1, 28, 28],
    ),
    "data_dir": _inpaint_data_dir,
    **sampling_rows(without=("sampler", "eta")),
}


def _walk(t: Tool, *digits: np.ndarray) -> np.ndarray:
    """The strip the library draws between ``digits`` with BASE's settings, as `interpolate` writes it."""
    run = load_run(t.artifacts / "runs" / "00001-plain", torch.device("cpu"))
    a, b = (torch.from_numpy(d)[None] / 255 for d in digits)
    walk = interpolate(run, a, b, SamplingConfig(sampler="ddim", steps=2, batch_size=2, precision="fp32"), frames=2)
    return np.asarray(grid_image(walk, nrow=2, scale=2))


def _interpolate_image(t: Tool) -> None:
    digits = data_digits()
    t("--image", "{tmp}/digit.png", "--image", "{tmp}/digit0.png")
    assert t.made()["interpolation"]["ends"] == ["digit", "digit"]
    assert np.array_equal(np.asarray(Image.open(t.out)), _walk(t, digits[5], digits[0]))


def _interpolate_data_dir(t: Tool) -> None:
    other = fake_digits(OTHER_TEST, 6)[0]
    t("--test-index", "0,1", "--data-dir", "{tmp}/other-data")
    assert np.array_equal(np.asarray(Image.open(t.out)), _walk(t, other[0], other[1]))


def _interpolate_output(t: Tool) -> None:
    t("-o", "{tmp}/walk.gif")
    with Image.open(t.tmp / "walk.gif") as gif:
        assert gif.n_frames == 2
    assert t.made(t.tmp / "walk.gif")["interpolation"] == {"frames": 2, "digit": None, "ends": [0, derive_seed(0, 1)]}


def interpolation(key: str) -> Callable[[Tool, object], object]:
    return lambda t, r: t.made()["interpolation"][key]


INTERPOLATE: dict[str, Use | Callable[[Tool], None]] = {
    **where_rows(lambda t: t.made()["run"]),
    "seeds": Use(("--seeds", "3,4"), interpolation("ends"), [3, 4]),
    "image": _interpolate_image,
    "test_index": Use(
        ("--test-index", "5,0"),
        lambda t, r: np.array_equal(np.asarray(Image.open(t.out)), _walk(t, data_digits()[5], data_digits()[0])),
    ),
    "frames": Use(("--frames", "3"), lambda t, r: (interpolation("frames")(t, r), size(t, r)), (3, (184, 64))),
    "sampler": Use(("--sampler", "dpmpp-2m"), setting("sampler"), "dpmpp-2m"),
    "digit": Use(("--digit", "3"), interpolation("digit"), 3, run="conditional"),
    "output": _interpolate_output,
    "scale": Use(("--scale", "3"), size, (186, 96)),
    "data_dir": _interpolate_data_dir,
    **sampling_rows(without=("sampler", "eta")),
}


def first_tile_is(digit: np.ndarray) -> Callable[[Tool, object], object]:
    """The grid's first tile, the original, is ``digit``."""
    return lambda t, r: np.array_equal(tile(t.out), digit)


INVERT: dict[str, Use | Callable[[Tool], None]] = {
    **where_rows(lambda t: t.made()["run"]),
    "image": Use(("--image", "{tmp}/digit.png"), first_tile_is(data_digits()[5]), drop=("--test-index",)),
    "test_index": Use(("--test-index", "5"), first_tile_is(data_digits()[5])),
    "steps": Use(("--steps", "2,3"), lambda t, r: (setting("steps")(t, r), size(t, r)), ([2, 3], (184, 64))),
    "digit": Use(("--digit", "3"), lambda t, r: t.made()["inversion"]["digit"], 3, run="conditional"),
    "output": Use(("-o", "{tmp}/other.png"), lambda t, r: t.made(t.tmp / "other.png")["run"], "00001-plain"),
    "scale": Use(("--scale", "3"), size, (186, 96)),
    "data_dir": Use(("--data-dir", "{tmp}/other-data"), first_tile_is(fake_digits(OTHER_TEST, 6)[0][0])),
    **sampling_rows(without=("sampler", "eta", "steps")),
}


def _eval_samples(t: Tool) -> None:
    path = t.tmp / "mine.safetensors"
    save_tensors(path, {"samples": torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(0))})
    result = t("--samples", str(path), "--json", drop=("--run",))
    printed = json.loads(result.output[result.output.index("{") :])
    assert printed["samples"] == str(path) and printed["n"] == 10 and "run" not in printed
    assert not any((p / "eval.json").exists() for p in (t.artifacts / "runs").iterdir())


EVAL: dict[str, Use | Callable[[Tool], None]] = {
    **where_rows(lambda t: t.eval_json()["run"]),
    "samples": _eval_samples,
    "n": Use(("--num-samples", "12"), lambda t, r: t.eval_json()["n"], 12, drop=("-n",)),
    "n_samples": Use(("--n-samples", "12"), lambda t, r: t.eval_json()["n"], 12, drop=("-n",)),  # the old name
    "nll": Use(("--nll", "--nll-images", "2"), lambda t, r: t.eval_json()["nll"]["n_images"], 2),
    "nll_images": Use(("--nll", "--nll-images", "3"), lambda t, r: t.eval_json()["nll"]["n_images"], 3),
    "json_output": Use(("--json",), lambda t, r: json.loads(r.output[r.output.index("{") :])["run"], "00001-plain"),
    "repeats": Use(("--repeats", "2"), lambda t, r: t.eval_json()["uncertainty"]["repeats"], 2),
    "bootstrap": Use(("--bootstrap", "7"), lambda t, r: t.eval_json()["uncertainty"]["bootstrap"], 7),
    "cas": Use(("--cas",), lambda t, r: t.eval_json()["cas"]["samples"]["n"], len(data_digits()), run="conditional"),
    "data_dir": Use(("--data-dir", "{tmp}/other-data"), lambda t, r: t.eval_json()["n_reference"], OTHER_TEST),
    **sampling_rows(),
    "precision": Use(
        ("--precision", "bf16"),
        lambda t, r: (setting("precision")(t, r), setting("network_precision")(t, r)),
        ("bf16", "bf16"),
    ),
}

TABLES = {"sample": SAMPLE, "inpaint": INPAINT, "interpolate": INTERPOLATE, "invert": INVERT, "eval": EVAL}


def check(command: str, flag: str, artifacts: Path, tmp_path: Path, data_dir: Path) -> None:
    if flag in ("device", "cuda_graphs") and torch.cuda.is_available():
        pytest.skip("checks the error of a machine without CUDA")
    t, row = Tool(command, tmp_path, artifacts, data_dir), TABLES[command][flag]
    row.check(t) if isinstance(row, Use) else row(t)


def _report_run(artifacts: Path, tmp: Path) -> None:
    result = runner.invoke(app, ["report", "--run", "guided", "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    assert "<h1>00002-guided</h1>" in (artifacts / "runs" / "00002-guided" / "report.html").read_text()


def _report_device(artifacts: Path, tmp: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("checks the error of a machine without CUDA")
    result = runner.invoke(app, ["report", "--device", "cuda", "--artifacts-dir", str(artifacts)])
    assert "CUDA" in error(result)
    result = runner.invoke(app, ["report", "--device", "cpu", "--run", "plain", "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    assert "denoising trajectory" in (artifacts / "runs" / "00001-plain" / "report.html").read_text()


def _report_artifacts_dir(artifacts: Path, tmp: Path) -> None:
    result = runner.invoke(app, ["report", "--artifacts-dir", str(artifacts)])  # the latest run
    assert result.exit_code == 0, result.output
    assert (artifacts / "runs" / "00003-conditional" / "report.html").is_file()


REPORT: dict[str, Callable[[Path, Path], None]] = {
    "run": _report_run,
    "device": _report_device,
    "artifacts_dir": _report_artifacts_dir,
}


# The sampling and editing commands, whose rows `check` runs.
EDITING_ROWS = {"sample": SAMPLE, "inpaint": INPAINT, "interpolate": INTERPOLATE, "invert": INVERT, "eval": EVAL}


@pytest.mark.parametrize("command", sorted(EDITING_ROWS))
def test_every_flag_of_a_sampling_command_has_a_row(command):
    assert params_of(command) == set(EDITING_ROWS[command])


@pytest.mark.parametrize(("command", "flag"), [(c, f) for c in sorted(EDITING_ROWS) for f in sorted(EDITING_ROWS[c])])
def test_sampling_flag_reaches_what_it_names(command, flag, runs, tmp_path, data_dir):
    check(command, flag, runs, tmp_path, data_dir)


@pytest.mark.parametrize("command", ["sample", "inpaint", "interpolate", "invert"])
def test_a_picture_says_how_it_was_made_and_the_same_settings_give_the_same_bytes(command, runs, tmp_path, data_dir):
    t = Tool(command, tmp_path, runs, data_dir)
    ends = ("--seeds", "0,1") if command == "interpolate" else ()  # not drawn from --seed
    t("-o", "{tmp}/a.png", "--seed", "3", *ends)
    t("-o", "{tmp}/b.png", "--seed", "3", *ends)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    made = t.made(tmp_path / "a.png")
    assert made["run"] == "00001-plain" and made["sampling"]["seed"] == 3
    if command in ("sample", "inpaint"):  # the picture and the tensors say the same
        assert made["sampling"] == json.loads(t.metadata()["sampling"])
    t("-o", "{tmp}/c.png", "--seed", "4", *ends)
    assert t.made(tmp_path / "c.png") == {**made, "sampling": {**made["sampling"], "seed": 4}}


# `compare` on the module's runs: a row per flag, each a function of (artifacts folder, this test's folder).


def _compare(artifacts: Path, *args: str):
    result = runner.invoke(app, ["compare", *args, "--artifacts-dir", str(artifacts)])
    assert result.exit_code == 0, result.output
    return result


def _compare_artifacts_dir(artifacts: Path, tmp: Path) -> None:
    shutil.copytree(artifacts / "runs" / "00001-plain", tmp / "elsewhere" / "runs" / "00007-moved")
    shutil.copytree(artifacts / "runs" / "00002-guided", tmp / "elsewhere" / "runs" / "00008-other")
    assert "00007-moved" in _compare(tmp / "elsewhere", "moved", "other").output


def _compare_runs(artifacts: Path, tmp: Path) -> None:
    assert "model.num_classes" in _compare(artifacts, "plain", "conditional").output  # the field that differs


def _compare_json(artifacts: Path, tmp: Path) -> None:
    printed = json.loads(_compare(artifacts, "plain", "3", "--json").output)
    assert [r["name"] for r in printed["runs"]] == ["00001-plain", "00003-conditional"]


def _compare_html(artifacts: Path, tmp: Path) -> None:
    _compare(artifacts, "plain", "guided", "--html", str(tmp / "c.html"))
    assert "00002-guided against 00001-plain" in (tmp / "c.html").read_text()


COMPARE: dict[str, Callable[[Path, Path], None]] = {
    "runs": _compare_runs,
    "json_output": _compare_json,
    "html": _compare_html,
    "artifacts_dir": _compare_artifacts_dir,
}


# The commands whose rows are functions of (the module's runs, this test's folder).
ROWS: dict[str, dict[str, Callable[[Path, Path], None]]] = {"report": REPORT, "compare": COMPARE}


@pytest.mark.parametrize("command", sorted(ROWS))
def test_every_flag_of_these_commands_has_a_row(command):
    assert params_of(command) == set(ROWS[command])


@pytest.mark.parametrize(("command", "flag"), [(c, f) for c in sorted(ROWS) for f in sorted(ROWS[c])])
def test_their_flags_reach_what_they_name(command, flag, runs, tmp_path):
    ROWS[command][flag](runs, tmp_path)


# ----------------------------------------------------------------------------- studio
#
# `studio` serves until Ctrl+C, so each row starts it as a user does, in a subprocess on the three tiny runs,
# reads the line naming the run and the address, asks its API, and stops it with Ctrl+C.


class StudioProcess:
    """``mnistdiff studio ARGS --artifacts-dir RUNS`` running, with its first line read, until Ctrl+C."""

    def __init__(self, tmp: Path, artifacts: Path, *args: str):
        opened = tmp / "opened"
        browser = tmp / "browser.sh"  # what webbrowser.open runs ($BROWSER): it notes the address
        browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
        browser.chmod(0o755)
        self.opened = opened
        command = [sys.executable, "-m", "mnist_diffusion", "studio", *args, "--artifacts-dir", str(artifacts)]
        env = {**os.environ, "BROWSER": str(browser), "PYTHONPATH": str(Path(__file__).parents[1])}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.line = self.process.stdout.readline().strip()
        self.url = self.line.split(" at ")[1].split()[0] if " at " in self.line else None

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=180) as reply:
            return json.loads(reply.read())

    def stop(self) -> str:
        """Ctrl+C; the exit status must be 0 unless the command failed. Returns what it wrote on stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        _, err = self.process.communicate(timeout=180)  # a hang guard: a loaded CPU can take a minute to stop it
        return err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def studio_row(*args: str, check: Callable[[StudioProcess], object], want: object = True, stderr: str = ""):
    """A row: the studio started with ``args`` (and --no-browser unless they say otherwise)."""

    def row(tmp: Path, artifacts: Path) -> None:
        s = StudioProcess(tmp, artifacts, *args)
        try:
            assert check(s) == want, s.line
        finally:
            err = s.stop()
        assert stderr in err, err

    return row


def _port(tmp: Path, artifacts: Path) -> None:
    port = free_port()
    studio_row("--port", str(port), "--no-browser", check=lambda s: s.url, want=f"http://127.0.0.1:{port}/")(
        tmp, artifacts
    )


def _no_browser(tmp: Path, artifacts: Path) -> None:
    s = StudioProcess(tmp, artifacts, "--port", "0", "--no-browser")
    s.stop()
    assert not s.opened.exists()
    s = StudioProcess(tmp, artifacts, "--port", "0")
    s.get("/api/runs")  # up and answering: the browser was asked before the server started
    s.stop()
    assert s.opened.read_text().strip() == s.url


def _device(tmp: Path, artifacts: Path) -> None:
    s = StudioProcess(tmp, artifacts, "--device", "cuda", "--port", "0", "--no-browser")
    err = s.stop()
    assert s.process.returncode == 1 and s.url is None
    assert err.strip().splitlines()[-1].startswith("Error:") and "CUDA" in err, err


STUDIO: dict[str, Callable[[Path, Path], None]] = {
    "run": studio_row(
        "--run", "1", "--port", "0", "--no-browser", check=lambda s: s.get("/api/runs")["default"], want="00001-plain"
    ),
    "artifacts_dir": studio_row(
        "--port",
        "0",
        "--no-browser",
        check=lambda s: s.get("/api/runs")["runs"],
        want=["00001-plain", "00002-guided", "00003-conditional"],
    ),
    "port": _port,
    "host": studio_row(
        "--host",
        "127.0.0.2",
        "--port",
        "0",
        "--no-browser",
        check=lambda s: s.url.split(":")[1],
        want="//127.0.0.2",
        stderr="warning: listening on 127.0.0.2",
    ),
    "no_browser": _no_browser,
    "data_dir": studio_row(
        "--data-dir",
        "/nonexistent",
        "--port",
        "0",
        "--no-browser",
        check=lambda s: s.get("/api/info?run=00003-conditional")["test_digits"],
        want=False,
    ),
    "device": _device,
}


def test_every_studio_flag_has_a_row():
    assert params_of("studio") == set(STUDIO)


@pytest.mark.parametrize("flag", sorted(STUDIO))
def test_studio_flag_reaches_what_it_names(flag, runs, tmp_path):
    pytest.importorskip("fastapi", reason="the studio extra is not installed")
    if flag == "device" and torch.cuda.is_available():
        pytest.skip("checks the error of a machine without CUDA")
    STUDIO[flag](tmp_path, runs)
