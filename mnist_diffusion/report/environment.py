"""The machine and software a report is written with: package version and git commit, Python,
torch, the device, the CPU and whether it has bf16 units (runtime.describe_machine), threads, GPUs."""

from __future__ import annotations

import platform

import torch

from .. import __version__
from ..runtime import describe_machine, native_bf16, pick_device


def gpus() -> str:
    if not torch.cuda.is_available():
        return "none"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return ", ".join(f"cuda:{i} {name}" for i, name in enumerate(names))


def environment() -> list[tuple[str, str]]:
    """(what, value) rows describing this machine and software (runtime.describe_machine)."""
    device = pick_device("auto")
    machine = describe_machine(device)
    commit = machine.commit
    bf16 = ", ".join(u for u in machine.vector_units if u in ("AVX512-BF16", "AMX")) or "yes"
    no_bf16 = "none (bf16 would be emulated, slower than fp32)"
    return [
        ("mnistdiff", __version__ + (f" (git commit {commit})" if commit else "")),
        ("Python", platform.python_version()),
        ("torch", torch.__version__ + (f" (CUDA {torch.version.cuda})" if torch.version.cuda else "")),
        ("device (--device auto)", str(device) + (", bf16 autocast" if native_bf16(device) else "")),
        ("CPU", machine.cpu),
        ("CPU bf16 units", bf16 if machine.bf16_units else no_bf16),
        ("torch threads", str(torch.get_num_threads())),
        ("GPU", gpus()),
        ("system", f"{platform.system()} {platform.machine()}"),
    ]
