"""Where the work runs: device choice, CPU threads, and torch.distributed set-up."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.distributed as dist

from .config import Precision
from .errors import UserError

DeviceName = Literal["auto", "cpu", "cuda", "mps"]


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The torch device for ``--device``; asking for one that is not there is a UserError."""
    has_mps = _has_mps()
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


def _has_mps() -> bool:
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
    if not use_cuda and (device_name == "mps" or (device_name == "auto" and _has_mps())):
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
    count: the one set-up every command does before its work."""
    info = info or DistInfo()
    device = pick_device(name, info.local_rank)
    if device.type == "cpu":
        configure_cpu_threads(info.world_size)
    return device
