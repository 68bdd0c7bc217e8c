"""The C allocator, set for a CPU training loop.

glibc serves every block above its mmap threshold (32 MiB at most) with a fresh mapping and unmaps it on free, so
each step's large sample buffers cost new zeroed pages again and again (a million page faults in a benchmark run).
With the thresholds raised, freed blocks stay in the heap for the next step. Only speed changes, never a value.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30


@functools.cache
def keep_freed_buffers() -> bool:
    """Keep freed blocks of up to 1 GiB in the process's heap instead of returning them to the system (once per
    process). Returns False where the C library is not glibc (nothing changes there)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * _KEEP_BYTES))
