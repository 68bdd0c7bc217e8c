"""Helpers shared by the benchmarks (``scripts/bench_*.py``): timing, the environment record, tables and JSON.

Timings are wall clock around synchronised regions: on CUDA the device is synchronised before the clock starts and
after it stops, never inside the timed loop.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from dreamnfsd.utils.files import atomic_output


# --- timing ---------------------------------------------------------------------------------------------------------
def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], n: int, warmup: int, device: torch.device | str) -> float:
    """Seconds per call of ``fn`` over ``n`` calls after ``warmup`` untimed ones (cudnn autotuning, lazy init)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n


@dataclass
class Timing:
    """One variant's calls: the first (warm-up, compilation included) and the timed repetitions."""

    first_s: float
    first_output: Any = None
    times: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def min_s(self) -> float:
        return min(self.times)


K = TypeVar("K", bound=Hashable)


def time_interleaved(
    variants: Mapping[K, Callable[[], Any]], reps: int, device: torch.device | str = "cpu"
) -> dict[K, Timing]:
    """Time every variant ``reps`` times after one warm-up call each, interleaved rep by rep, so that a machine
    whose speed drifts (shared cores, thermal limits) slows all variants alike and their ratios stay fair."""
    out: dict[K, Timing] = {}
    for key, fn in variants.items():
        sync(device)
        t = time.perf_counter()
        first = fn()
        sync(device)
        out[key] = Timing(time.perf_counter() - t, first)
    for _ in range(reps):
        for key, fn in variants.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            out[key].times.append(time.perf_counter() - t)
    return out


# --- memory ---------------------------------------------------------------------------------------------------------
def free_cached(device: torch.device | str) -> None:
    """Collect garbage and return the CUDA caching allocator's free blocks, so the next peak is the next run's own."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device | str) -> float | None:
    """Peak allocated GPU memory since the last :func:`reset_peak`; None on a CPU."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if torch.device(device).type == "cuda" else None


# --- the report -----------------------------------------------------------------------------------------------------
# Allocator settings that change CPU timings; recorded so that figures are compared like with like.
ALLOCATOR_VARS = ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")


def host_environment() -> dict:
    """Library versions, threads, CPU, the allocator variables and the load average (taken as a run starts; the
    caller adds ``load_avg_end``)."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        **{name: os.environ.get(name) for name in ALLOCATOR_VARS},
        "load_avg_start": os.getloadavg()[0],
    }


_WIDTH = re.compile(r"^(.?[<>^])?(\d+)")


def format_table(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width text table. ``columns``: (title, format spec) pairs, e.g. ``("rays/s", ">10,.0f")``; the title
    takes the spec's alignment and width. A ``None`` cell prints as "-", a string cell with the alignment only."""

    def just(spec: str) -> str:
        m = _WIDTH.match(spec)
        return f"{m.group(1) or '>'}{m.group(2)}" if m else ""

    def cell(value: Any, spec: str) -> str:
        if value is None:
            return format("-", just(spec))
        return format(value, just(spec) if isinstance(value, str) else spec)

    lines = [" ".join(format(title, just(spec)) for title, spec in columns)]
    lines += [" ".join(cell(v, spec) for v, (_, spec) in zip(row, columns)) for row in rows]
    return "\n".join(lines)


def write_json(report: dict, path: str | Path) -> Path:
    """Write ``report`` as indented JSON, crash-safely (a reader never sees half a file)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return path
