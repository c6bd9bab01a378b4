"""The process's memory allocators on Linux, set up before anything allocates: glibc's malloc
(through ``mallopt``, every command on the CPU) and torch's CPU allocator (transparent huge pages,
``train``). No torch here, so a command can call it first thing. MNISTDIFF_ALLOCATOR=system, or a
MALLOC_* variable of the user's own, leaves both as they come; elsewhere (macOS, Windows, musl) a
no-op.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

# glibc's mallopt parameters (malloc.h) and the values mnistdiff sets: keep freed memory in the
# process instead of handing it back to the system after every operation, and serve the network's
# activation buffers from the heap rather than fresh mmap'ed pages, which are zero-filled and
# page-faulted in again at every use (docs/RESULTS.md: the allocator's effect on sampling and training).
# mallopt refuses an mmap threshold above 32 MiB, and sampling's batch of 500 has larger buffers:
# M_MMAP_MAX 0 serves those from the heap too.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
ALLOCATOR_SETTINGS = {M_TRIM_THRESHOLD: 2**30, M_TOP_PAD: 2**29, M_MMAP_THRESHOLD: 2**25, M_MMAP_MAX: 0}

# torch's CPU allocator reads this once, at its first allocation in the process: "1" aligns every
# buffer of 2 MiB or more to 2 MiB and marks it for transparent huge pages (madvise), so the
# network's large activations take fewer TLB misses (PyTorch's CPU performance tuning guide).
# Training gains from it; sampling does not, and pays system time for it (docs/RESULTS.md).
THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def _left_alone() -> bool:
    """Whether the user asked for the allocators as they come, or the platform is not glibc's Linux."""
    if os.environ.get("MNISTDIFF_ALLOCATOR") == "system" or any(k.startswith("MALLOC_") for k in os.environ):
        return True
    return not sys.platform.startswith("linux")


def prefer_huge_pages() -> bool:
    """Ask torch's CPU allocator for huge pages (:data:`THP_VARIABLE`), unless the user set that
    variable or :func:`_left_alone`: ``train`` calls it first thing, since it takes effect only
    before torch's first CPU allocation. Returns whether huge pages are asked for now."""
    if _left_alone():
        return False
    os.environ.setdefault(THP_VARIABLE, "1")
    return os.environ[THP_VARIABLE] == "1"


@functools.cache
def tune_allocator() -> bool:
    """Set glibc malloc's trim threshold, top pad and mmap threshold (:data:`ALLOCATOR_SETTINGS`)
    through ``mallopt``, once per process. Returns whether glibc took them."""
    if _left_alone():
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in ALLOCATOR_SETTINGS.items())
