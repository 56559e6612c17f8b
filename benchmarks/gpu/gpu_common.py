"""What the scripts of ``benchmarks/gpu`` share (imported from beside them): a row log with a deadline, relative
errors, short error texts, timing, memory and the matrix-product ceiling.

``RowLog`` appends each row to a JSONL file as it is measured (and prints it), so that a script stopped at its time
limit keeps what it measured.

``median_ms`` times with CUDA events through ``triton.testing.do_bench`` (median; its warm-up and repetition
arguments are milliseconds), or with a wall clock for the scripts' CPU dry runs; ``peak_device_mib`` is the CUDA
allocator's peak of one call above what was allocated before it.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch


class RowLog:
    """Rows appended to ``out/jsonl`` (one JSON per line, flushed) and printed; ``left()``: seconds to the deadline."""

    def __init__(self, out: Path, jsonl: str, max_seconds: float) -> None:
        self.out = out
        self.jsonl = jsonl
        self.stop_at = time.monotonic() + max_seconds
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.stop_at - time.monotonic()

    def row(self, **row: Any) -> dict[str, Any]:
        with open(self.out / self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        return row


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error ``|a - b| / |b|`` in float64 (``inf`` when not finite)."""
    a, b = a.detach().double(), b.detach().double()
    err = float((a - b).norm() / b.norm().clamp_min(1e-300))
    return err if math.isfinite(err) else float("inf")


def short(exc: BaseException, width: int = 200) -> str:
    """``Type: first line of the message`` (at most ``width`` characters of it)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:width] if str(exc) else ''}"


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


def step_pair(call: Callable[[], torch.Tensor], leaves: tuple[torch.Tensor, ...] | list[torch.Tensor],
              grad_out: torch.Tensor) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """``(forward, forward+backward)`` closures of ``call``: the forward under ``torch.no_grad``, the backward as
    ``torch.autograd.grad`` of ``grad_out`` with respect to ``leaves`` (nothing accumulates into ``.grad``)."""

    def fwd() -> Any:
        with torch.no_grad():
            return call()

    def fwdbwd() -> Any:
        return torch.autograd.grad(call(), tuple(leaves), grad_out)

    return fwd, fwdbwd


def timed_median_s(fn: Callable[[], Any], device: torch.device, *, reps: int = 10, warmup: int = 3
                   ) -> tuple[float, list[float]]:
    """Median seconds of ``fn`` over ``reps`` calls after ``warmup`` calls, each timed alone with CUDA events (a
    wall clock on the CPU); also the samples."""
    times = []
    for i in range(warmup + reps):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            dt_s = e0.elapsed_time(e1) / 1e3
        else:
            t0 = time.perf_counter()
            fn()
            dt_s = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt_s)
    return statistics.median(times), times


def matmul_ceiling(device: torch.device, *, n: int, reps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """TFLOP/s of an ``n x n x n`` matmul on random data (bf16 on CUDA, float32 on CPU): median of ``reps`` calls
    after ``warmup`` calls, timed with CUDA events (CPU: ``perf_counter``)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    med, times = timed_median_s(lambda: torch.matmul(a, b), device, reps=reps, warmup=warmup)
    del a, b
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "reps": reps, "median_s": med,
            "tflops": 2.0 * n**3 / med / 1e12, "min_s": min(times), "max_s": max(times)}
