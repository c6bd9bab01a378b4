"""Every command's --help tells the truth. Each default it shows (Typer's "[default: X]" or the
help's own "(default X)") is the one the command uses when the flag is left out: the sampling and
editing commands are run on two tiny runs without their sampling flags and the settings they
record are read back (a picture's text, eval.json); other defaults are read from the objects the
command hands them to. Every command has an example that parses, and flags that exclude each other
say so and refuse to be given together."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shlex
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
import typer
from conftest import TINY_FLAGS
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from mnist_diffusion.cli import app
from mnist_diffusion.config import SamplerName
from mnist_diffusion.io import save_tensors
from mnist_diffusion.pictures.grids import picture_text
from mnist_diffusion.pictures.inputs import parse_mask
from mnist_diffusion.runs.store import load_config, resolve_run, weights_metadata
from mnist_diffusion.runtime import COMPILE_MIN_STEPS, compile_by_default
from mnist_diffusion.sampling.outputs import END_GRID, END_GRID_CONDITIONAL
from mnist_diffusion.seeds import derive_seed
from mnist_diffusion.training.plan import StepPlan

runner = CliRunner()


def commands() -> dict:
    """Every command by the words that call it ("sample", "data download"), sub-apps included."""

    def walk(group, words: str):
        for name, command in group.commands.items():
            called = f"{words} {name}".strip()
            if hasattr(command, "commands"):  # a sub-app
                yield from walk(command, called)
            else:
                yield called, command

    return dict(walk(typer.main.get_command(app), ""))


COMMANDS = commands()


@cache
def option_help(command: str) -> dict[str, str]:
    """Each option's row in ``command --help`` rendered 200 columns wide, by its long flag, its
    wrapped lines joined."""
    result = runner.invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    rows: dict[str, str] = {}
    flag = None
    for line in result.output.splitlines():
        body = line.strip().strip("│").strip()
        if not line.strip().startswith("│") or not body:
            flag = None
            continue
        first = re.match(r"(--[\w-]+)", body)
        if first:
            flag = first.group(1)
            rows[flag] = body
        elif flag:
            rows[flag] += " " + body
    return rows


# "[default: X]", "(default X)", "(...; default: X)" or ". Default: X": the default a help shows
SHOWN = re.compile(r"(?:^|[(\[;.]\s*)default:?\s+([^;()\]]+)", re.IGNORECASE)


def shown_defaults(command: str) -> dict[str, set[str]]:
    """The defaults ``command --help`` shows, by long flag."""
    out = {}
    for flag, text in option_help(command).items():
        found = {m.group(1).strip().rstrip(".").strip() for m in SHOWN.finditer(text)}
        if found:
            out[flag] = found
    return out


def param(command: str, flag: str):
    return next(p for p in COMMANDS[command].params if flag in p.opts)


# ----------------------------------------------------------------------------- what the commands use


class Used:
    """The sampling and editing commands, run on two tiny runs with their flags left out, and
    what they record. "plain" is a copy of conftest's ``tiny_run`` (the default preset: pixel
    clusters; T = 50); "guided", the latest, is a conditional run with T = 100 and a guide
    (noisy copies of its weights), so that autoguidance, label guidance and every default step
    count apply in full."""

    def __init__(self, folder: Path, data_dir: Path):
        self.folder, self.data_dir = folder, data_dir
        self.artifacts = folder / "artifacts"
        self.drawing = folder / "drawing.png"
        self.records: dict[tuple, dict] = {}
        self.tiny = Path()  # conftest's tiny_run, as trained

    def run_dir(self, run: str) -> Path:
        return next(p for p in (self.artifacts / "runs").iterdir() if p.name.endswith("-" + run))

    def invoke(self, command: str, run: str, *args: str) -> tuple[Path, list[str]]:
        """``command`` on ``run`` (guided as the latest: no --run) in an empty folder: the folder,
        and the files it wrote there."""
        argv = [command, *args, "--artifacts-dir", str(self.artifacts)]
        argv += ["--run", run] if run != "guided" else []
        argv += ["--data-dir", str(self.data_dir)] if "--data-dir" in option_help(command) else []
        where = self.folder / f"{command}-{len(self.records)}"
        where.mkdir()
        with contextlib.chdir(where):
            result = runner.invoke(app, argv)
        assert result.exit_code == 0, result.output
        return where, sorted(p.name for p in where.iterdir())

    def record(self, command: str, run: str = "guided", *args: str) -> dict:
        """What ``command`` on ``run`` with ``args`` (and the inputs it needs) records of how it
        made its picture, with "file" (what it wrote) and "count" (its samples); eval's eval.json."""
        key = (command, run, args)
        if key in self.records:
            return self.records[key]
        if command == "eval":
            assert self.invoke(command, run, "-n", "10", *args)[1] == []
            made = json.loads((self.run_dir(run) / "eval.json").read_text())
        else:
            inputs = ("--test-index", "0") if command in ("inpaint", "invert") else ()
            tensors = self.folder / f"{len(self.records)}.safetensors"
            saved = ("--save-tensor", str(tensors)) if "--save-tensor" in option_help(command) else ()
            cwd, (file,) = self.invoke(command, run, *inputs, *saved, *args)
            made = json.loads(picture_text(cwd / file)["mnistdiff"])
            made["file"] = file
            if saved:
                with safe_open(tensors, "pt") as f:
                    made["metadata"] = dict(f.metadata())
                made["count"] = len(load_file(tensors)["samples"])
        self.records[key] = made
        return made

    def sampling(self, command: str, run: str = "guided", *args: str) -> dict:
        return self.record(command, run, *args)["sampling"]


@pytest.fixture(scope="module")
def used(tmp_path_factory, tiny_run, data_dir) -> Used:
    u = Used(tmp_path_factory.mktemp("help"), data_dir)
    u.tiny = tiny_run[1]
    plain = u.artifacts / "runs" / "00001-plain"
    plain.mkdir(parents=True)
    for p in tiny_run[1].iterdir():
        (plain / p.name).write_bytes(p.read_bytes())
    flags = [*TINY_FLAGS[:-2], "--grid", "0", "--timesteps", "100", "--conditional", "--max-steps", "2"]
    where = ["--run-name", "guided", "--data-dir", str(data_dir), "--artifacts-dir", str(u.artifacts)]
    result = runner.invoke(app, ["train", *flags, *where])
    assert result.exit_code == 0, result.output
    guided = u.run_dir("guided")
    weights = load_file(guided / "model.safetensors")
    noisy = {k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0)) for k, v in weights.items()}
    save_tensors(guided / "guide.safetensors", noisy, weights_metadata(load_config(guided)))
    drawing = np.zeros((28, 28), np.uint8)
    drawing[4:24, 12:16] = 255  # a stroke: a 1
    Image.fromarray(drawing, mode="L").save(u.drawing)
    return u


def g(value: float) -> str:
    return f"{value:g}"


def takes(command: str) -> tuple[str, ...]:
    """The samplers ``command --help`` lists for --sampler, but DDPM (which always takes all T steps)."""
    listed = option_help(command)["--sampler"]
    return tuple(s for s in get_args(SamplerName) if s != "ddpm" and re.search(rf"\b{s}\b(?!-)", listed))


def steps(command: str) -> Callable[[Used], str]:
    """--steps: each sampler the command takes, with the steps it records without --steps."""
    return lambda u: ", ".join(f"{s} {u.sampling(command, 'guided', '--sampler', s)['steps']}" for s in takes(command))


def sampling_truth(command: str) -> dict[str, Callable[[Used], str]]:
    """The defaults of a sampling command's shared flags, as it records them."""
    rows = {
        "--run": lambda u: "the latest run" if u.record(command)["run"] == u.run_dir("guided").name else "another",
        "--seed": lambda u: str(u.sampling(command)["seed"]),
        "--precision": lambda u: u.sampling(command)["precision"],
        "--batch-size": lambda u: str(u.sampling(command)["batch_size"]),
        "--autoguidance": lambda u: g(u.sampling(command)["guidance"]["auto"]),
        "--label-guidance": lambda u: g(u.sampling(command)["guidance"]["labels"]),
        "--cluster-guidance": lambda u: g(u.sampling(command, "plain")["guidance"]["clusters"]),  # a clustered run
        "--guidance-max-sigma": lambda u: (
            "every step guided" if u.sampling(command)["guidance"]["max_sigma"] is None else "a limit"
        ),
        "--spacing": lambda u: g(u.sampling(command)["spacing"]),
        "--steps": lambda u: str(u.sampling(command)["steps"]),
    }
    if "--sampler" in option_help(command):
        rows["--sampler"] = lambda u: u.sampling(command)["sampler"]
        rows["--steps"] = steps(command)
    if "--eta" in option_help(command):
        rows["--eta"] = lambda u: str(u.sampling(command)["eta"])
    if "--output" in option_help(command):
        rows["--output"] = lambda u: u.record(command)["file"]
    return rows


def _strength(u: Used) -> str:
    return g(json.loads(u.record("sample", "guided", "--init", str(u.drawing))["metadata"]["sdedit"])["strength"])


def _interpolate_spacing(u: Used) -> str:
    seeds, digits = u.sampling("interpolate"), u.sampling("interpolate", "guided", "--test-index", "0,1")
    return f"{seeds['spacing']:g} between seeds, {digits['spacing']:g} between real digits"


def _seeds(u: Used) -> str:
    ends = u.record("interpolate")["interpolation"]["ends"]
    return "--seed and the next" if ends == [0, derive_seed(0, 1)] else f"the seeds {ends}"


def _mask(u: Used) -> str:
    (bits,) = u.record("inpaint")["inpainting"]["missing"]
    recorded = np.unpackbits(np.frombuffer(bytes.fromhex(bits), np.uint8)).reshape(28, 28)
    names = ("left", "right", "top", "bottom", "center")
    return next(name for name in names if np.array_equal(recorded, parse_mask(name)[0, 0].numpy()))


def _matched_or_not(u: Used, value: Callable[[dict], object]) -> str:
    """An `inpaint` default that depends on matched clusters: its value on the clustered run with
    its training digits at hand, then with --no-match-clusters."""
    on, off = (value(u.record("inpaint", "plain", *flags)) for flags in ((), ("--no-match-clusters",)))
    return f"{on} with matched clusters, else {off}"


def _report_run(u: Used) -> str:
    latest = u.run_dir("guided") / "report.html"
    latest.unlink(missing_ok=True)
    result = runner.invoke(app, ["report", "--artifacts-dir", str(u.artifacts)])
    assert result.exit_code == 0, result.output
    return "the latest run" if latest.is_file() else "another run"


def _train_steps(u: Used) -> str:
    cfg = load_config(u.run_dir("plain"))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=None))  # --steps left out
    return "epochs x steps per epoch" if StepPlan.of(cfg, 7, 1).total_steps == cfg.train.epochs * 7 else "?"


def _run_name(u: Used) -> str:
    trained = u.tiny  # trained without --run-name
    return "the preset" if trained.name.split("-", 1)[1] == load_config(trained).preset else trained.name


def _compile(u: Used) -> str:
    cpu = torch.device("cpu")
    assert compile_by_default(cpu, None, COMPILE_MIN_STEPS - 1) is None  # fewer steps: off
    assert compile_by_default(cpu, torch.bfloat16, 10**6) is None  # not fp32: off
    assert compile_by_default(torch.device("cuda"), None, 10**6) is None  # not a CPU: off
    return f"on for fp32 runs of {COMPILE_MIN_STEPS:,} steps or more on a Linux CPU without AVX-512"


# command -> flag -> what the command uses when the flag is left out, in the words --help should use;
# a default shown without a row here must be the flag's own Typer default, handed to the command as it is
TRUTH: dict[str, dict[str, Callable[[Used], str]]] = {
    "sample": {
        **sampling_truth("sample"),
        "--num-samples": lambda u: str(u.record("sample")["count"]),
        "--strength": _strength,
    },
    "eval": sampling_truth("eval"),
    "inpaint": {
        **sampling_truth("inpaint"),
        "--num-samples": lambda u: str(u.record("inpaint")["inpainting"]["n"]),
        "--jumps": lambda u: str(u.record("inpaint")["inpainting"]["jumps"]),
        "--resample": lambda u: _matched_or_not(u, lambda made: made["inpainting"]["resample"]),
        "--cluster-guidance": lambda u: _matched_or_not(u, lambda made: g(made["sampling"]["guidance"]["clusters"])),
        "--match-clusters": lambda u: (
            "on where --data-dir holds MNIST's training digits"
            if u.record("inpaint", "plain")["inpainting"]["match_clusters"]  # the data folder holds them
            else "off"
        ),
        "--mask": _mask,
    },
    "interpolate": {
        **sampling_truth("interpolate"),
        "--spacing": _interpolate_spacing,
        "--seeds": _seeds,
        "--frames": lambda u: str(u.record("interpolate")["interpolation"]["frames"]),
    },
    "invert": {
        **sampling_truth("invert"),
        "--steps": lambda u: ",".join(map(str, u.sampling("invert")["steps"])),  # guided's T is 100: all of them
    },
    "report": {"--run": _report_run},
    "studio": {"--run": lambda u: "the latest run" if resolve_run(None, u.artifacts) == u.run_dir("guided") else "?"},
    "train": {
        "--preset": lambda u: load_config(u.run_dir("plain")).preset,
        "--run-name": _run_name,
        "--steps": _train_steps,
        "--grid": lambda u: f"{END_GRID}, {END_GRID_CONDITIONAL} if --conditional",
        "--compile": _compile,
    },
}


def typer_default(command: str, flag: str) -> str:
    """The flag's default as Typer shows it."""
    default = param(command, flag).default
    return str(default) if not isinstance(default, (list, tuple)) else ", ".join(map(str, default))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_default_a_help_shows_is_the_one_the_command_uses(command, used):
    truth, shown = TRUTH.get(command, {}), shown_defaults(command)
    wrong = []
    for flag, phrases in shown.items():
        want = truth[flag](used) if flag in truth else typer_default(command, flag)
        if phrases != {want}:
            wrong.append(f"{command} {flag}: --help says {sorted(phrases)}, the command uses {want!r}")
    assert not wrong, "\n".join(wrong)
    assert set(truth) <= set(shown), f"{command}: no default shown for {sorted(set(truth) - set(shown))}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_an_example_that_parses(command):
    words = command.split()
    lines = [line.strip() for line in (COMMANDS[command].help or "").splitlines()]
    examples = [line.removeprefix("Example: mnistdiff ") for line in lines if line.startswith("Example: mnistdiff ")]
    assert examples, f"{command} --help has no line 'Example: mnistdiff {command} ...'"
    for example in examples:
        args = shlex.split(example)
        assert args[: len(words)] == words, example
        COMMANDS[command].make_context(command, args[len(words) :])  # an unknown flag or a bad value raises


def test_the_top_level_help_has_an_example():
    assert "Example: mnistdiff train" in typer.main.get_command(app).help


def test_old_and_deprecated_names_are_hidden_but_taken():
    assert "--n-samples" not in option_help("eval") and "--num-samples" in option_help("eval")
    assert all("--guidance" not in option_help(c) for c in COMMANDS)
    assert param("eval", "--n-samples").hidden and param("sample", "--guidance").hidden


# (command, flag, the flag it excludes, a command line with both, what the error says)
EXCLUSIVE = [
    ("eval", "--samples", "--run", ["--samples", "mine.safetensors", "--run", "1"], "give --run or --samples"),
    ("interpolate", "--seeds", "--test-index", ["--seeds", "0,1", "--test-index", "0,1"], "--seeds or as digits"),
    ("interpolate", "--seeds", "--image", ["--seeds", "0,1", "--image", "a.png", "--image", "b.png"], "not both"),
    ("sample", "--digit", "--labels", ["--digit", "3", "--labels", "1,2"], "give --digit or --labels, not both"),
    ("sample", "--labels", "--digit", ["--labels", "1,2", "--digit", "3"], "give --digit or --labels, not both"),
]


@pytest.mark.parametrize(("command", "flag", "other", "args", "needle"), EXCLUSIVE)
def test_flags_that_exclude_each_other_say_so_and_refuse_to_be_given_together(
    command, flag, other, args, needle, tmp_path
):
    assert re.search(rf"not with [^;)]*{other}\b", option_help(command)[flag]), option_help(command)[flag]
    argv = [command, *args, "--artifacts-dir", str(tmp_path)]
    if "--output" in option_help(command):
        argv += ["-o", str(tmp_path / "out.png")]
    result = runner.invoke(app, argv)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert lines[-1].startswith("Error:") and needle in lines[-1], result.output
