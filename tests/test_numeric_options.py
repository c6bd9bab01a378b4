"""Every number a command takes, fuzzed: whatever value an int or float option of train, sample,
eval, inpaint, interpolate, invert, visualize-forward or studio is given (huge, negative, zero, inf, nan,
2^64, ...), the command ends in success or in one ``Error:`` line (or Typer's own range message),
never in a traceback, a kill or a hang, with no more than a few GiB of address space.

The options come from the commands' Typer parameters, so a new numeric flag is fuzzed as soon as
it exists. Each case runs as ``python -m mnist_diffusion ...`` runs (the package's ``__main__``,
by runpy) in a process of its own, with an address-space limit (RLIMIT_AS) and an alarm: a child
forked from one interpreter that has imported torch and the commands' modules once (``SERVER``),
which keeps the several hundred cases to a minute or so on one core. Beside it, a few cases run as
``python -m mnist_diffusion`` itself, and the error handler's allocation failures are checked
directly.
"""

from __future__ import annotations

import json
import math
import os
import resource
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import mnist_diffusion
from mnist_diffusion.cli import app
from mnist_diffusion.config import activation_bytes, image_bytes, memory_bytes
from mnist_diffusion.runs.store import load_config

pytestmark = pytest.mark.skipif(
    not (hasattr(os, "fork") and Path("/proc/self/statm").exists()), reason="needs fork and /proc (Linux)"
)

COMMANDS = ("train", "sample", "eval", "inpaint", "interpolate", "invert", "visualize-forward", "studio")
EXTRA_ADDRESS_SPACE = 3 * 2**30  # what a case may map beyond the interpreter with torch loaded
CASE_SECONDS = 60  # a case still running after this is a hang

# The fixed values of every option of a kind, then a few drawn ones. Drawn ints are small or past
# 2^40: a count in between (say -n 20000) is legal and takes its time, which is not a failure.
BOUNDARY = {int: [-1, 0, 2**63 - 1, 2**64], float: [math.nan, math.inf, -1.0, 0.0, 1e308]}
DRAWN = {
    int: st.one_of(st.integers(-3, 8), st.integers(2**40, 2**80), st.integers(-(2**80), -(2**40))),
    float: st.floats(allow_nan=True, allow_infinity=True),
}

# A child of this interpreter per case: python -m mnist_diffusion's work, without its start-up.
SERVER = r"""
import contextlib, io, json, os, resource, runpy, signal, sys, traceback

import torch

import mnist_diffusion.cli  # noqa: F401
import mnist_diffusion.evaluation.scoring  # noqa: F401  (what the commands import when they run)
import mnist_diffusion.monitors.progress  # noqa: F401
import mnist_diffusion.pictures.forward  # noqa: F401
import mnist_diffusion.report.run_report  # noqa: F401
import mnist_diffusion.sampling.edit_outputs  # noqa: F401
import mnist_diffusion.training.trainer  # noqa: F401
try:
    import mnist_diffusion.studio.server  # noqa: F401  (where the studio extra is installed)
except ImportError:
    pass
from mnist_diffusion.config import DEFAULT
from mnist_diffusion.runtime import matmul_rate
from mnist_diffusion.training.speed import step_flops_per_image

# What every training run measures or loads first, done once here: the matrix rate train reports
# (cached per process) and the first FLOP count's imports. One thread: safe to fork after.
matmul_rate(torch.device("cpu"), torch.float32)
step_flops_per_image(DEFAULT)
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # the parser's own imports
    try:
        mnist_diffusion.cli.app(["sample", "--eta", "2"], prog_name="mnistdiff")
    except SystemExit:
        pass


def case(args, stdout, stderr, extra_address_space, seconds):
    sys.stdout.flush()
    pid = os.fork()
    if pid:
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])  # negative: killed by that signal
    code = 1
    try:
        mapped = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = mapped + extra_address_space
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        signal.alarm(seconds)
        for fd, path in ((1, stdout), (2, stderr)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["mnistdiff", *args]
        try:
            runpy.run_module("mnist_diffusion", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        except BaseException:
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


for line in sys.stdin:
    print(json.dumps(case(**json.loads(line))), flush=True)
"""


def numeric_options(command: str) -> list[tuple[str, type]]:
    """(flag, int or float) of each numeric option of ``command``, from its Typer parameters."""
    params = typer.main.get_command(app).commands[command].params
    out = []
    for p in params:
        kind = getattr(getattr(p, "type_descriptor", None), "annotation", None)
        if kind is None and hasattr(p, "type"):  # a Typer that exposes click's types instead
            kind = {"integer": int, "float": float}.get(getattr(p.type, "name", ""))
        if kind in (int, float) and not p.is_flag:
            out.append((max(p.opts, key=len), kind))
    return out


class Cases:
    """Runs command lines through the SERVER, each with the flags that keep a success quick
    (``base``); the fuzzed flag replaces its own companion and brings the flags it needs."""

    def __init__(
        self,
        server: subprocess.Popen,
        folder: Path,
        base: dict[str, dict[str, str | None]],
        needs: dict[str, dict[str, str | None]],
    ):
        self.server, self.folder, self.base, self.needs = server, folder, base, needs
        self.count = 0

    def args(self, command: str, flag: str, value) -> list[str]:
        base = {k: v for k, v in self.base[command].items() if k != flag}
        pairs = self.needs.get(flag, {})
        flags = {**base, **pairs}
        args = [command]
        for k, v in flags.items():
            args += [k] if v is None else [k, v]
        return [*args, flag, repr(value) if isinstance(value, float) else str(value)]

    def run(self, args: list[str]) -> tuple[int, str, str]:
        self.count += 1
        out, err = self.folder / "stdout.txt", self.folder / "stderr.txt"
        request = dict(
            args=args, stdout=str(out), stderr=str(err), extra_address_space=EXTRA_ADDRESS_SPACE, seconds=CASE_SECONDS
        )
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        ready, _, _ = select.select([self.server.stdout], [], [], CASE_SECONDS + 30)
        assert ready, f"no answer for {args}"
        code = json.loads(self.server.stdout.readline())
        return code, out.read_text(errors="replace"), err.read_text(errors="replace")

    def check(self, command: str, flag: str, value) -> None:
        args = self.args(command, flag, value)
        assert_one_ending(*self.run(args), args)


def assert_one_ending(code: int, stdout: str, stderr: str, args) -> None:
    """Success, one ``Error:`` line last on stderr, or Typer's usage error; nothing else."""
    what = f"mnistdiff {' '.join(map(str, args))}\nexit {code}\nstderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, what
    assert code >= 0, f"killed by signal {-code} (14: a hang)\n{what}"
    if code == 0:
        return
    if code == 2 and "Invalid value for" in stderr:  # Typer's own check of a range or a type
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], what


@pytest.fixture(scope="module")
def cases(tiny_run, data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("numeric-options")
    artifacts = folder / "sampled"
    shutil.copytree(tiny_run[0], artifacts, symlinks=True)  # eval writes into its run
    Image.new("L", (28, 28), 128).save(folder / "drawing.png")
    out = str(folder / "out.png")
    where = {"--device": "cpu", "--artifacts-dir": str(artifacts)}
    data = {"--data-dir": str(data_dir)}
    base = {
        "train": {
            "--channels": "8",
            "--channel-mult": "1,2,2",
            "--batch-size": "16",
            "--timesteps": "50",
            "--clusters": "0",
            "--epochs": "1",
            "--max-steps": "1",
            "--grid": "0",
            "--sample-every": "0",
            "--no-compile": None,
            "--device": "cpu",
            "--artifacts-dir": str(folder / "trained"),
            **data,
        },
        "sample": {"--num-samples": "2", "--steps": "2", "-o": out, **where},
        "eval": {"--n-samples": "10", "--steps": "2", "--json": None, **where, **data},
        "inpaint": {"--test-index": "0", "--num-samples": "1", "--steps": "2", "-o": out, **where, **data},
        "interpolate": {"--frames": "2", "--steps": "2", "-o": out, **where},
        "invert": {"--test-index": "0", "--steps": "2", "-o": out, **where, **data},
        "visualize-forward": {"--digits": "2", "--columns": "2", "--timesteps": "50", "-o": out, **data},
        # A port the studio could listen on would serve until Ctrl+C: on no host, every port ends in one line.
        "studio": {"--host": "256.0.0.1", "--no-browser": None, **where},
    }
    needs = {
        "--strength": {"--init": str(folder / "drawing.png")},
        "--nll-images": {"--nll": None},
        "--eval-samples": {"--eval-every": "1"},
        "--eval-every": {"--eval-samples": "10"},
    }
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(mnist_diffusion.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=folder
    )
    yield Cases(server, folder, base, needs)
    server.stdin.close()
    server.wait(timeout=60)


def test_the_fuzzed_commands_are_every_command_with_a_number():
    group = typer.main.get_command(app)
    with_numbers = {name for name in group.commands if name != "data" and numeric_options(name)}
    assert with_numbers == set(COMMANDS)
    flags = {flag for command in COMMANDS for flag, _ in numeric_options(command)}
    assert {
        "--seed",
        "--num-samples",
        "--n-samples",
        "--frames",
        "--jumps",
        "--resample",
        "--lr",
        "--channels",
        "--timesteps",
        "--batch-size",
        "--eta",
        "--strength",
        "--digits",
        "--columns",
        "--eval-samples",
    } <= flags


@pytest.mark.parametrize("command", COMMANDS)
def test_every_numeric_option_ends_in_success_or_one_error_line(command, cases):
    options = numeric_options(command)
    assert options
    for flag, kind in options:
        for value in BOUNDARY[kind]:
            cases.check(command, flag, value)

    @settings(
        max_examples=max(3, len(options) // 2),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def drawn(data):
        flag, kind = data.draw(st.sampled_from(options), label="option")
        cases.check(command, flag, data.draw(DRAWN[kind], label="value"))

    drawn()


def _address_space_limit(env: dict[str, str], extra: int) -> int:
    """The address space ``python -m mnist_diffusion`` maps once its modules are loaded, plus ``extra``."""
    probe = (
        "import os, torch, mnist_diffusion.cli, mnist_diffusion.sampling.outputs;"
        "print(int(open('/proc/self/statm').read().split()[0]) * os.sysconf('SC_PAGE_SIZE'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    return int(out.stdout) + extra


def _python_m(args: list, env: dict[str, str], limit: int, cwd: Path) -> tuple[int, str, str]:
    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run(
        [sys.executable, "-m", "mnist_diffusion", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        preexec_fn=preexec,
        timeout=CASE_SECONDS,
    )
    return result.returncode, result.stdout, result.stderr


def test_python_m_under_an_address_space_limit(tiny_run, tmp_path):
    """``python -m mnist_diffusion`` itself, under RLIMIT_AS: two refusals of the fuzzed kind, and
    a batch that this machine's memory would hold (so no estimate refuses it) but that the process
    may not map, which fails at its first large allocation and says so in one line."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(mnist_diffusion.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    limit = _address_space_limit(env, 2**30)
    where = ["--artifacts-dir", tiny_run[0], "--device", "cpu", "-o", tmp_path / "out.png"]
    for args in (["sample", "--seed", 2**64, *where], ["interpolate", "--frames", 10**12, "--steps", 2, *where]):
        assert_one_ending(*_python_m(args, env, limit, tmp_path), args)

    model = load_config(tiny_run[1]).model
    n = int(0.8 * memory_bytes()) // (activation_bytes(model) + image_bytes(2))
    if n * activation_bytes(model) < 4 * 2**30:
        pytest.skip("too little memory here for a batch that outgrows the limit at once")
    args = ["sample", "-n", n, "--batch-size", n, "--steps", 1, *where]
    code, _, stderr = _python_m(args, env, limit, tmp_path)
    assert_one_ending(code, "", stderr, args)
    assert code == 1 and "Error: out of memory" in stderr and "smaller -n or --batch-size" in stderr, stderr
