"""Keep freed memory in the process on Linux (glibc), so that tensors of a repeated size do not fault in fresh pages.

glibc serves every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB as large blocks are
freed) with a fresh ``mmap`` and returns it to the kernel on ``free``. A render chunk or a training step allocates
and frees the same large tensors again and again, so each one faults in and zeroes new pages: in the default
``train.py`` run, 15.8 million page faults and 39 s of system time, and one stage-2 evaluation view took 14.3 s
against 8.9 s with the pages kept (experiments/RESULTS.md). Raising the mmap threshold and the trim threshold keeps
freed blocks in the heap for reuse. Nothing computed changes; the resident set can stay nearer its peak.

``import laser`` applies it (:func:`keep_freed_memory`); ``LASER_KEEP_FREED_MEMORY=0`` leaves glibc's defaults.
The training loop hands what is free back to the kernel before each stage (:func:`release_freed_memory`), so that
a stage's peak memory is its own. Elsewhere (macOS, Windows, musl) both do nothing: their allocators differ.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1          # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30            # bytes: blocks up to 1 GiB come from the heap and stay there when freed


def _glibc():
    """glibc's C library, or None (another platform or C library, or switched off)."""
    if not sys.platform.startswith("linux") or os.environ.get("LASER_KEEP_FREED_MEMORY", "1") == "0":
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds to :data:`THRESHOLD`; True when applied. A glibc that refuses an mmap
    threshold above 32 MiB (older releases) gets 32 MiB. Threads other than the main one allocate from arenas of
    at most 64 MiB, so their larger blocks stay mapped and unmapped as before."""
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    trim = bool(libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD))
    mmap = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)) or bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20))
    return trim and mmap


def release_freed_memory() -> None:
    """Return the heap's free memory to the kernel (``malloc_trim``), e.g. between stages."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim(0)
