"""The machine and software a report is written with: package version and git commit, Python,
torch, the device, the CPU and whether it has bf16 units, threads, GPUs."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from .. import __version__
from ..runtime import native_bf16, pick_device

CHECKOUT = Path(__file__).resolve().parents[2]  # the repository, when the package runs from a git checkout


def git_commit(root: Path = CHECKOUT) -> str | None:
    """The short commit of the checkout the package runs from, "+ local changes" if tracked files
    differ from it; None outside a git checkout or without git."""
    if not (root / ".git").exists():
        return None
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()  # fmt: skip

        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (" + local changes" if changed else "")


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform module says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_bf16_units() -> str:
    """Which bf16 instructions the CPU has (AVX512-BF16, AMX), or "none"."""
    probes = {"AVX512-BF16": "_is_avx512_bf16_supported", "AMX": "_is_amx_tile_supported"}
    found = [name for name, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()]
    return ", ".join(found) or "none (bf16 would be emulated, slower than fp32)"


def gpus() -> str:
    if not torch.cuda.is_available():
        return "none"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return ", ".join(f"cuda:{i} {name}" for i, name in enumerate(names))


def environment() -> list[tuple[str, str]]:
    """(what, value) rows describing this machine and software."""
    commit = git_commit()
    device = pick_device("auto")
    return [
        ("mnistdiff", __version__ + (f" (git commit {commit})" if commit else "")),
        ("Python", platform.python_version()),
        ("torch", torch.__version__ + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else "")),
        ("device (--device auto)", str(device) + (", bf16 autocast" if native_bf16(device) else "")),
        ("CPU", cpu_model()),
        ("CPU bf16 units", cpu_bf16_units()),
        ("torch threads", str(torch.get_num_threads())),
        ("GPU", gpus()),
        ("system", f"{platform.system()} {platform.machine()}"),
    ]
