"""Timing and memory helpers shared by the scripts of ``benchmarks/gpu`` (imported from beside them).

``median_ms`` times with CUDA events through ``triton.testing.do_bench`` (median; its warm-up and repetition
arguments are milliseconds), or with a wall clock for the scripts' CPU dry runs; ``peak_device_mib`` is the CUDA
allocator's peak of one call above what was allocated before it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def median_ms(fn: Callable[[], Any], *, dry: bool, rep_ms: int = 60, warmup_ms: int = 10) -> float:
    """Median milliseconds of ``fn``: ``triton.testing.do_bench`` on CUDA, three wall-clock calls in a dry run."""
    if dry:
        fn()
        ts = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return 1e3 * statistics.median(ts)
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def peak_device_mib(fn: Callable[[], Any], *, dry: bool) -> float | None:
    """Peak CUDA memory of one call of ``fn`` above what was allocated before it (MiB); None in a dry run."""
    if dry:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20
