"""Every flag reaches what it names. Each command's table has one row per parameter of the Typer
command, read from the command itself, so a flag added later without a row fails here.

A row runs the command as a user types it (CliRunner) with that flag at a non-default value,
and checks where the value lands: the run's config.json, its run.json or checkpoint, a file
the flag asks for, or the one-line error of a value that cannot work on this machine."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from conftest import TINY_FLAGS, fake_digits
from PIL import Image
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.data.mnist import raw_dir, write_idx_images, write_idx_labels
from mnist_diffusion.runs.store import load_config, read_metrics
from mnist_diffusion.runtime import cxx_compiler

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
    result = runner.invoke(app, ["train", *BASE, "--data-dir", str(raw.parent.parent), "--artifacts-dir",
                                 str(t.artifacts)])  # fmt: skip
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
    "preset": Row(("--preset", "seed", "--channels", "8", "--timesteps", "50", "--batch-size", "16", "--max-steps",
                   "1", "--grid", "0"), config(lambda c: (c.preset, c.model.arch)), ("seed", "seed"), base=False),
    "channels": Row(("--channels", "16"), config(lambda c: c.model.channels), 16),
    "channel_mult": Row(("--channel-mult", "1,1,2"), config(lambda c: c.model.channel_mult), (1, 1, 2)),
    "conditional": Row(("--conditional",), config(lambda c: (c.model.num_classes, c.train.clusters)), (10, 0)),
    "clusters": Row(("--clusters", "4"), lambda t, r: (t.config().model.num_classes,
                                                        (t.run / "clusters.safetensors").is_file()), (4, True)),
    "guide_at": Row(("--guide-at", "0.5"), config(lambda c: c.train.guide_at), 0.5),
    "seed": Row(("--seed", "7"), config(lambda c: c.train.seed), 7),
    "steps": Row(("--steps", "3", "--max-steps", "0"), lambda t, r: (t.config().train.steps, t.done_at()), (3, 3)),
    "time_budget": Row(("--time-budget", "3s", "--max-steps", "0"),
                       lambda t, r: t.json("run.json")["time_budget"]["seconds"], 3.0),
    "max_steps": Row(("--max-steps", "3"), lambda t, r: t.done_at(), 3),
    "precision": Row(("--precision", "fp32"), config(lambda c: c.train.precision), "fp32"),
    "run_name": Row(("--run-name", "named"), lambda t, r: t.run.name.split("-", 1)[1], "named"),
    "resume": _resume,
    "grid": _grid,
    "compile": _compile,
    "cuda_graphs": Row(("--cuda-graphs", "--device", "cpu"), lambda t, r: "--cuda-graphs needs a CUDA GPU" in error(r),
                       ok=False),
    "sample_every": Row(("--sample-every", "1"), lambda t, r: sorted(p.name for p in (t.run / "progress").iterdir()),
                        ["samples-00000001.png", "samples-00000002.png"]),
    "eval_every": Row(("--eval-every", "2", "--eval-samples", "10"),
                      lambda t, r: [x["step"] for x in read_metrics(t.run) if "fid" in x], [2]),
    "eval_samples": Row(("--eval-every", "2", "--eval-samples", "12"),
                        lambda t, r: [x["fid_n"] for x in read_metrics(t.run) if "fid" in x], [12]),
    "tensorboard": Row(("--tensorboard",), lambda t, r: any((t.run / "tensorboard").iterdir())),
    "device": Row(("--device", "cuda"), lambda t, r: "CUDA" in error(r), ok=False),
    "artifacts_dir": Row((), lambda t, r: t.run.parent.parent == t.artifacts and (t.artifacts / "latest").is_file()),
    "data_dir": _data_dir,
}  # fmt: skip


def test_every_train_flag_has_a_row():
    assert params_of("train") == set(TRAIN)


@pytest.mark.parametrize("flag", sorted(TRAIN))
def test_train_flag_reaches_what_it_names(flag, tmp_path, data_dir):
    if flag == "tensorboard":
        pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    t, row = Train(tmp_path, data_dir), TRAIN[flag]
    row.check(t) if isinstance(row, Row) else row(t)
