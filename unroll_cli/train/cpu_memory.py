"""Keep freed CPU memory in the process (glibc malloc), for steady training-step speed.

PyTorch's CPU allocator does not cache: every step frees its activations and gradients and
allocates them again. glibc then trims freed blocks back to the OS and serves large ones with
fresh ``mmap`` calls, so each step page-faults its buffers in anew (about 5 % of a LISTA step on
2 cores, ``scripts/bench_lista.py``). Raising both thresholds keeps the pages in the process.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Process-wide; returns False where glibc's ``mallopt`` is not available (macOS, musl...)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, 1 << 30)) and bool(mallopt(M_MMAP_THRESHOLD, 1 << 25))
