"""Every machine a user has: each platform decision tested with the platform's facts patched in
(CUDA capability, CPU units, MPS, NCCL, the torch version), since CI runs on one x86 CPU."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from mnist_diffusion import runtime
from mnist_diffusion.diffusion.nll import float64_device
from mnist_diffusion.errors import UserError
from mnist_diffusion.runtime import autocast, autocast_dtype, init_distributed, native_bf16
from mnist_diffusion.training.recipe import fused_adamw

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda", 0), torch.device("mps")


@pytest.fixture
def cpu_units(monkeypatch):
    """Set which bf16 units the CPU reports: cpu_units(avx512_bf16, amx)."""

    def set_units(avx512_bf16: bool, amx: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)

    return set_units


@pytest.mark.parametrize(
    "capability,native",
    [((6, 1), False), ((7, 0), False), ((7, 5), False), ((8, 0), True), ((8, 9), True), ((9, 0), True)],
)
def test_bf16_is_auto_only_on_gpus_that_have_it_natively(monkeypatch, capability, native):
    # A T4 (7.5) or V100 (7.0) answers is_bf16_supported() with True, through emulation.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert native_bf16(CUDA) is native
    assert autocast_dtype("auto", CUDA) == (torch.bfloat16 if native else None)
    assert autocast_dtype("bf16", CUDA) == torch.bfloat16  # asked for, it is given
    assert autocast_dtype("fp16", CUDA) == torch.float16


@pytest.mark.parametrize("avx512_bf16,amx,native", [(False, False, False), (True, False, True), (False, True, True)])
def test_bf16_is_auto_only_on_cpus_with_bf16_units(cpu_units, avx512_bf16, amx, native):
    cpu_units(avx512_bf16, amx)
    assert native_bf16(CPU) is native
    assert autocast_dtype("auto", CPU) == (torch.bfloat16 if native else None)
    assert autocast_dtype("fp32", CPU) is None and autocast_dtype("bf16", CPU) == torch.bfloat16


def test_precisions_a_device_cannot_run_are_one_line_errors():
    with pytest.raises(UserError, match="--precision fp16 is for CUDA GPUs, not cpu"):
        autocast_dtype("fp16", CPU)
    with pytest.raises(UserError, match="--precision bf16 is supported on cuda and cpu, not mps"):
        autocast_dtype("bf16", MPS)
    with pytest.raises(UserError, match="--precision must be one of auto, fp32, bf16, fp16"):
        autocast_dtype("fp8", CPU)
    assert autocast_dtype("auto", MPS) is None  # Apple's GPU: fp32


def test_autocast_is_not_entered_at_all_for_fp32(monkeypatch):
    # torch before 2.5 raises on torch.autocast("mps", enabled=False): fp32 must not touch it
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: pytest.fail("autocast entered for fp32"))
    assert isinstance(autocast(MPS, None), contextlib.nullcontext)
    with autocast(CPU, None):
        pass


@pytest.mark.parametrize(
    "device,version,fused",
    [
        ("cuda", "2.2.0", True),
        ("cpu", "2.3.1", False),
        ("cpu", "2.4.0", True),
        ("mps", "2.2.2", False),
        ("mps", "2.5.0", True),
        ("mps", "2.14.1+cpu", True),
        ("xpu", "2.14.1", False),
    ],
)
def test_fused_adamw_where_the_installed_torch_has_it(device, version, fused):
    assert fused_adamw(torch.device(device), version) is fused


def test_float64_maths_stays_on_the_cpu_for_mps():
    assert float64_device(MPS) == CPU and float64_device(CPU) == CPU and float64_device(CUDA) == CUDA


@pytest.fixture
def torchrun_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    chosen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: chosen.append(backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda rank: None)
    return chosen


@pytest.mark.parametrize("cuda,nccl,backend", [(True, True, "nccl"), (True, False, "gloo"), (False, True, "gloo")])
def test_torchrun_backend_is_nccl_only_where_it_exists(monkeypatch, torchrun_env, cuda, nccl, backend):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: nccl)  # Windows builds have no NCCL
    info = init_distributed("auto")
    assert torchrun_env == [backend] and info.world_size == 2 and info.is_main


def test_torchrun_on_mps_is_refused_in_one_line(monkeypatch, torchrun_env):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "mps_available", lambda: True)
    for device in ("auto", "mps"):
        with pytest.raises(UserError, match="torchrun on Apple's MPS is not supported"):
            init_distributed(device)
    assert torchrun_env == []


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), "mallinfo2")
    except OSError:
        return False


ALLOCATOR_PROBE = """
import ctypes, json, os, sys
from mnist_diffusion.allocator import prefer_huge_pages, tune_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

def huge_bytes():
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("AnonHugePages:"))

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
prefer_huge_pages()  # as train does first thing
tuned = tune_allocator()
import torch

before, huge = libc.mallinfo2().hblkhd, huge_bytes()  # bytes in mmapped chunks (some from imports)
big = torch.ones(64 * 2**20, dtype=torch.uint8)  # larger than any mmap threshold mallopt accepts; touched
print(json.dumps({"tuned": tuned, "mmapped_bytes": libc.mallinfo2().hblkhd - before,
                  "huge_bytes": huge_bytes() - huge}))
"""


def _thp_mode() -> str:
    """The kernel's transparent huge page mode: always, madvise or never ("" where it has none)."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return ""
    return text[text.index("[") + 1 : text.index("]")] if "[" in text else ""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _has_mallinfo2(), reason="glibc 2.33+ only")
@pytest.mark.parametrize(
    "env, tuned, huge",
    [
        ({}, True, True),
        ({"MNISTDIFF_ALLOCATOR": "system"}, False, False),
        ({"MALLOC_ARENA_MAX": "2"}, False, False),
        ({"THP_MEM_ALLOC_ENABLE": "0"}, True, False),
    ],
)
def test_the_allocator_serves_large_buffers_from_the_heap_unless_the_user_chose(env, tuned, huge):
    """Tuned, glibc keeps a 64 MiB tensor in its heap rather than a fresh mmap (which the kernel
    zero-fills and faults in again at every use), and, asked as train asks, torch puts it on huge
    pages where the kernel gives them on request; MNISTDIFF_ALLOCATOR=system or a MALLOC_* variable
    of the user's own leaves glibc and torch as they come, and THP_MEM_ALLOC_ENABLE of the user's
    own is kept."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("MNISTDIFF_ALLOCATOR", "THP_MEM_ALLOC_ENABLE")
    }
    out = subprocess.run(
        [sys.executable, "-c", ALLOCATOR_PROBE], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout
    probe = json.loads(out.splitlines()[-1])
    assert probe["tuned"] is tuned
    if tuned:
        assert probe["mmapped_bytes"] == 0
    else:
        assert probe["mmapped_bytes"] >= 64 * 2**20
    if _thp_mode() == "madvise":  # "always" gives huge pages to every process, "never" to none
        assert (probe["huge_bytes"] >= 32 * 2**20) is huge, probe


# ------------------------------------------------------------------------------ torch.compile


@pytest.fixture
def compile_facts(monkeypatch):
    """Set the facts the compile default reads: compile_facts(kernels, compiler, platform)."""

    def set_facts(kernels: str = "AVX2", compiler: str | None = "g++", platform: str = "linux") -> None:
        monkeypatch.setattr(runtime, "cpu_kernels", lambda: kernels)
        monkeypatch.setattr(runtime, "cxx_compiler", lambda: compiler)
        monkeypatch.setattr(sys, "platform", platform)

    return set_facts


@pytest.mark.parametrize(
    "device,dtype,kernels,compiler,platform,steps,compiled",
    [
        (CPU, None, "AVX2", "g++", "linux", 4685, True),  # the default preset's 5 epochs, fp32, AVX2 kernels
        (CPU, None, "AVX2", "g++", "linux", 3500, True),
        (CPU, None, "AVX2", "g++", "linux", 3499, False),  # too short to win back a first compilation
        (CPU, None, "AVX512", "g++", "linux", 4685, False),  # measured: 1.04x, and 512-bit kernels crashed
        (CPU, None, "DEFAULT", "g++", "linux", 4685, False),
        (CPU, torch.bfloat16, "AVX2", "g++", "linux", 4685, False),
        (CPU, None, "AVX2", None, "linux", 4685, False),  # no C++ compiler: inductor cannot build
        (CPU, None, "AVX2", "cl", "win32", 4685, False),
        (CPU, None, "AVX2", "clang++", "darwin", 4685, False),
        (CUDA, None, "AVX2", "g++", "linux", 4685, False),
        (MPS, None, "AVX2", "g++", "linux", 4685, False),
    ],
)
def test_compile_is_the_default_only_where_it_was_measured_to_pay(
    compile_facts, device, dtype, kernels, compiler, platform, steps, compiled
):
    compile_facts(kernels, compiler, platform)
    why = runtime.compile_by_default(device, dtype, steps)
    assert (why is not None) is compiled
    if compiled:
        assert f"{steps:,} steps" in why and "--no-compile" in why


@pytest.mark.parametrize(
    "device,dtype,kernels,options",
    [
        (CPU, None, "AVX2", {"layout_optimization": False}),
        (CPU, None, "AVX512", {"layout_optimization": False, "cpp.simdlen": 256}),
        (CPU, torch.bfloat16, "AVX512", {"layout_optimization": False}),
        (CUDA, None, "AVX512", None),
    ],
)
def test_compile_options_keep_nchw_and_256_bit_vectors_for_fp32_on_avx512(
    monkeypatch, compile_facts, device, dtype, kernels, options
):
    compile_facts(kernels)
    seen = []
    monkeypatch.setattr(torch, "compile", lambda net, options=None: seen.append(options) or net)
    net = torch.nn.Linear(2, 2)
    assert runtime.compile_network(net, device, dtype) is net
    assert seen == [options]


def _failing_compile(calls):
    from torch._dynamo.exc import BackendCompilerFailed

    def compiled(x):
        calls.append(x)
        if len(calls) == 1 or x is None:
            raise BackendCompilerFailed(lambda: None, RuntimeError("no working C++ compiler\nmore lines"), None)
        return x * 2

    return compiled


def test_a_failed_compilation_falls_back_to_eager_with_one_line():
    lines, calls = [], []
    net = runtime.EagerFallback(lambda x: x + 1, _failing_compile(calls), lines.append)
    assert net(1) == 2 and net(2) == 3  # eager from the failure on: the compiled one is not called again
    assert calls == [1] and len(lines) == 1
    assert "torch.compile failed here" in lines[0] and "no working C++ compiler" in lines[0] and "\n" not in lines[0]


def test_a_failed_compilation_that_was_asked_for_is_a_one_line_error():
    net = runtime.EagerFallback(lambda x: x + 1, _failing_compile([]), print, required=True)
    with pytest.raises(UserError, match="torch.compile failed here .*train without --compile"):
        net(1)


def test_a_failure_after_compilation_worked_is_raised():
    from torch._dynamo.exc import BackendCompilerFailed

    calls = [0]  # the first call succeeds
    net = runtime.EagerFallback(lambda x: x + 1, _failing_compile(calls), print)
    assert net(3) == 6
    with pytest.raises(BackendCompilerFailed):
        net(None)


@pytest.mark.skipif(runtime.cxx_compiler() is None, reason="torch.compile needs a C++ compiler for the CPU")
def test_the_compiled_network_computes_what_the_eager_one_does():
    # The CPU's options and the UNet's compiled path (upsampling as a broadcast) for real, on a
    # tiny network: the same outputs and gradients to float rounding.
    from conftest import tiny_config

    from mnist_diffusion.nets.unet import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config().model)
    for p in model.parameters():  # the zero-initialised output layers would hide the upsampling's gradient
        torch.nn.init.normal_(p, std=0.2)
    x, t = torch.randn(4, 1, 28, 28), torch.randint(0, 50, (4,))
    compiled = runtime.compile_network(model, CPU, None)
    results = []
    for net in (model, compiled):
        model.zero_grad()
        out = net(x, t)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (eager, eager_grads), (comp, comp_grads) = results
    torch.testing.assert_close(comp, eager, rtol=1e-4, atol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(comp_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)
