"""Where the work runs: the device and what it is (model, vector units, measured matrix rate),
the precision it computes in, CPU threads, the memory allocator, and torch.distributed set-up."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
import torch.distributed as dist

from .allocator import tune_allocator
from .config import Precision
from .errors import UserError

DeviceName = Literal["auto", "cpu", "cuda", "mps"]


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for ``--device``; asking for one that is not there is a UserError."""
    has_mps = mps_available()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU here (try --device cpu)")
        return torch.device("cuda", local_rank)
    if name == "mps":
        if not has_mps:
            raise UserError("--device mps was asked for, but Apple's MPS backend is not available here")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise UserError(f"--device must be one of {', '.join(get_args(DeviceName))} (got {name!r})")


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: an NVIDIA GPU of compute capability 8.0 or
    newer (Ampere on; older ones report bf16 support but emulate it, without cuDNN convolutions),
    or a CPU with AVX512-BF16 or AMX instructions. Elsewhere bf16 is emulated, slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 units: AVX512-BF16 or AMX."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype the network runs in under autocast for ``--precision``, or None for fp32: "auto"
    is bf16 where ``device`` has it natively (:func:`native_bf16`), fp32 elsewhere; "bf16" on a
    CPU or CUDA GPU; "fp16" on a CUDA GPU (training then scales the loss, see GradScaler)."""
    if precision not in get_args(Precision):
        raise UserError(f"--precision must be one of {', '.join(get_args(Precision))} (got {precision!r})")
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError(f"--precision fp16 is for CUDA GPUs, not {device.type} (use fp32, or bf16 on the CPU)")
        return torch.float16
    if precision == "bf16":
        if device.type not in ("cuda", "cpu"):
            raise UserError(f"--precision bf16 is supported on cuda and cpu, not {device.type}")
        return torch.bfloat16
    return torch.bfloat16 if precision == "auto" and native_bf16(device) else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` to ``dtype`` on ``device``, or no context at all for fp32 (None): some
    builds refuse even a disabled autocast on some devices (MPS before torch 2.5)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def precision_name(dtype: torch.dtype | None) -> str:
    """ "bf16", "fp16" or "fp32": what the network ran in."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def configure_cpu_threads(world_size: int = 1) -> int:
    """Use every core this process may run on, shared among the local ranks; returns the count.
    An explicit OMP_NUM_THREADS wins."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    torch.set_num_threads(threads)
    return threads


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (world_size 1 when run alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group torchrun set up (env:// rendezvous): NCCL on CUDA where this build
    has it, gloo elsewhere (the CPU, or Windows). Apple's MPS has no collective backend: a
    torchrun job there is refused."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if not use_cuda and (device_name == "mps" or (device_name == "auto" and mps_available())):
        raise UserError("torchrun on Apple's MPS is not supported (it has no collective backend): train in one process")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda and dist.is_nccl_available() else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def setup_device(name: str = "auto", info: DistInfo | None = None) -> torch.device:
    """The device for ``--device`` (under torchrun, this rank's GPU), and on the CPU the thread
    count and the memory allocator: the one set-up every command does before its work."""
    info = info or DistInfo()
    device = pick_device(name, info.local_rank)
    if device.type == "cpu":
        configure_cpu_threads(info.world_size)
        tune_allocator()
    return device


def sampling_memory_format(device: torch.device) -> torch.memory_format:
    """The layout the network's weights take for sampling on ``device``: channels-last (NHWC) on
    the CPU, where sampling runs about 1.25x as fast with it (oneDNN's convolutions; training
    gains nothing from it and keeps NCHW; docs/RESULTS.md), unless MNISTDIFF_CHANNELS_LAST=0; as
    trained elsewhere. The network and its weights are the same either way; only the memory order moves."""
    if device.type == "cpu" and os.environ.get("MNISTDIFF_CHANNELS_LAST", "1") != "0":
        return torch.channels_last
    return torch.contiguous_format


# --------------------------------------------------------------------------------------- the machine


@dataclass(frozen=True)
class Machine:
    """What a run runs on, as `train`'s first line and the benchmarks report it."""

    device: str  # cpu, cuda or mps
    cpu: str  # the CPU's model name
    vector_units: tuple[str, ...]  # of AVX2, AVX-512, AVX512-BF16, AMX (x86), NEON (Arm)
    bf16_units: bool  # the CPU computes bf16 natively (AVX512-BF16 or AMX)
    cores: int  # CPU cores this process may run on
    threads: int  # torch's CPU threads
    gpu: str | None  # the GPU's name and memory, if the device is one
    capability: str | None  # CUDA compute capability, such as "9.0"
    commit: str | None  # the git commit of the checkout the package runs from (None if not one)

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """ "AMD EPYC (2 cores, 2 threads; AVX2; no bf16 units)", or the GPU's description."""
        units = ", ".join(self.vector_units) or "no AVX"
        cpu = f"{self.cpu} ({self.cores} cores, {self.threads} threads; {units}; " + (
            "bf16 units)" if self.bf16_units else "no bf16 units)"
        )
        return f"{self.gpu} (compute capability {self.capability}); CPU {cpu}" if self.gpu else cpu


def describe_machine(device: torch.device) -> Machine:
    """The machine behind ``device``: the CPU's model and vector units, cores and threads, the GPU."""
    flags = _cpu_flags()
    names = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX512-BF16", "amx_tile": "AMX", "asimd": "NEON"}
    units = tuple(name for flag, name in names.items() if flag in flags)
    if not units and platform.machine().lower() in ("arm64", "aarch64"):
        units = ("NEON",)
    gpu = capability = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu, capability = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)", f"{props.major}.{props.minor}"
    elif device.type == "mps":
        gpu = "Apple GPU (MPS)"
    return Machine(
        device.type,
        _cpu_model(),
        units,
        cpu_has_bf16(),
        _usable_cores(),
        torch.get_num_threads(),
        gpu,
        capability,
        git_commit(),
    )


CHECKOUT = Path(__file__).resolve().parents[1]  # the repository, when the package runs from a git checkout


def git_commit(root: Path = CHECKOUT) -> str | None:
    """The short commit of the checkout the package runs from, "+ local changes" if tracked files
    differ from it; None outside a git checkout or without git."""
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + (" + local changes" if changed else "")


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _cpu_info() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _cpu_flags() -> set[str]:
    for line in _cpu_info().splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_model() -> str:
    for line in _cpu_info().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        try:
            cmd = ["sysctl", "-n", "machdep.cpu.brand_string"]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
            if out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def measure_matmul_rate(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 6
) -> float:
    """The measured rate, in GFLOP/s, of an n x n matrix product in ``dtype`` on ``device``: the
    yardstick the training step's speed is given against. What the machine can do, so the fastest
    of ``repeats`` timed products: on a shared host a median of a few still catches a stall."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    times = []
    for i in range(repeats + 1):  # the first is a warm-up
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e9


# The rate as train reports it: measured once per process for each device, dtype and size.
matmul_rate = functools.cache(measure_matmul_rate)


def sync(device: torch.device) -> None:
    """Wait for the device to finish its queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# --------------------------------------------------------------------------------------- torch.compile

# Compiling the default network took 46 s the first time on 2 cores (5 s from inductor's cache
# after that), and a compiled step saved about 14 ms: a run wins a first compilation back after
# about 3,300 steps (docs/RESULTS.md). Shorter runs stay eager.
COMPILE_MIN_STEPS = 3500


def cpu_kernels() -> str:
    """The vector instructions ATen's CPU kernels use here: "AVX2", "AVX512", "DEFAULT" (none),
    "NEON" or the like; ATEN_CPU_CAPABILITY lowers it, and torch.compile's code follows."""
    return torch.backends.cpu.get_cpu_capability()


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile would build the CPU's kernels with, or None if it finds none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except (ImportError, RuntimeError, OSError):  # inductor's InvalidCxxCompiler is a RuntimeError
        return None


def compile_by_default(device: torch.device, dtype: torch.dtype | None, steps: int) -> str | None:
    """Why a run of ``steps`` steps is compiled when ``--compile`` is left out, or None where it
    is not. Compiled only where it was measured to pay: fp32 training on a Linux CPU whose
    kernels stop at AVX2 (no AVX-512), the class of most laptops and small cloud VMs, where
    fusing GroupNorm, SiLU and the additions made a step 1.05x to 1.10x as fast
    (benchmarks/profile_step.py; 1.07x over 5 epochs, docs/RESULTS.md); with AVX-512 the gain
    was smaller (1.03x in fp32, 1.07x in bf16), and torch 2.14.1's 512-bit fp32 kernels
    corrupted the heap on a Zen 4 EPYC."""
    if device.type != "cpu" or dtype is not None or sys.platform != "linux" or steps < COMPILE_MIN_STEPS:
        return None
    if cpu_kernels() != "AVX2" or cxx_compiler() is None:
        return None
    return f"fp32 on a CPU with AVX2 kernels, {steps:,} steps (--no-compile turns it off)"


def compile_network(net: torch.nn.Module, device: torch.device, dtype: torch.dtype | None):
    """``torch.compile(net)``, with the CPU's options: NCHW kept (inductor's default turns the
    convolutions channels-last, where its GroupNorm kernels and oneDNN's weight gradients are
    slower: profile_step.py's compile+channels-last variant), and on a CPU with AVX-512 in fp32
    256-bit vectors (with 512-bit ones torch 2.14.1's training kernels corrupted the heap)."""
    if device.type != "cpu":
        return torch.compile(net)
    # torch's C++ builder warns when it finds a CUDA toolkit but no GPU: nothing to do with the CPU's kernels
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    options: dict = {"layout_optimization": False}
    if dtype is None and cpu_kernels().startswith("AVX512"):
        options["cpp.simdlen"] = 256
    return torch.compile(net, options=options)


class EagerFallback:
    """A compiled network that becomes the network itself if its compilation fails on the first
    call (no working C++ compiler, say): one line says so, and the step runs eagerly; where the
    user asked for compilation (``required``) that line is a UserError instead. A failure after
    the first call is raised: compilation worked here, so something else is wrong."""

    def __init__(self, model: torch.nn.Module, compiled, log, required: bool = False):
        from torch._dynamo.exc import BackendCompilerFailed  # torch.compile's; loaded only when compiling

        self.model, self.compiled, self.log, self.required = model, compiled, log, required
        self.failure = BackendCompilerFailed  # inductor's errors (InductorError) are of this class
        self.proven = False

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                out = self.compiled(*args, **kwargs)
            except self.failure as e:
                if self.proven:
                    raise
                inner = getattr(e, "inner_exception", None) or e  # what the backend raised
                text = str(inner).strip()
                reason = f"{type(inner).__name__}: {text.splitlines()[0]}" if text else type(inner).__name__
                if self.required:
                    raise UserError(f"torch.compile failed here ({reason[:200]}); train without --compile") from None
                self.log(f"torch.compile failed here ({reason[:200]}); training on without it")
                self.compiled = None
            else:
                self.proven = True
                return out
        return self.model(*args, **kwargs)
