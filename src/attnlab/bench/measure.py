"""Measurement utilities: wall time (median after warm-up), peak memory, fitted growth exponents.

Time: ``fn`` is run ``warmup`` times, then ``repeats`` times; each run is timed with :func:`time.perf_counter`
around ``fn`` followed by ``torch.cuda.synchronize()`` on CUDA (so queued kernels are counted); the median is
reported. A time budget stops repeating early for slow cases (at least ``min_repeats`` are always run).

Peak memory:

* **CUDA**: ``torch.cuda.max_memory_allocated`` during one run, minus the memory allocated before it: the peak of
  the caching allocator's live bytes caused by the step.
* **CPU**: :class:`LiveTensorTracker`, a ``TorchDispatchMode`` that sees every tensor produced by an ATen op
  during the step (forward and backward: CPU autograd runs the backward ops on the calling thread), counts each
  new storage's ``nbytes`` while it is alive (a weak reference tells when it is freed) and records the peak. It
  measures *live tensor storage allocated during the step* -- activations, saved tensors, temporaries and gradients
  -- and not tensors that existed before (weights, inputs), allocator slack, or scratch memory that a kernel uses
  internally without returning it as a tensor (e.g. inside a fused SDPA kernel). That is the same quantity the
  CUDA figure measures, up to the CUDA allocator's rounding.
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["Timing", "time_fn", "time_fns", "LiveTensorTracker", "peak_memory", "fit_exponent", "synchronize"]


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median of ``samples`` (after warm-up) and every sample."""

    median: float
    samples: tuple[float, ...]

    @property
    def spread(self) -> float:
        """(max - min) / median of the samples, a rough noise figure."""
        return (max(self.samples) - min(self.samples)) / self.median if self.median > 0 else float("nan")


def time_fn(fn: Callable[[], Any], *, device: str | torch.device = "cpu", warmup: int = 2, repeats: int = 7,
            min_repeats: int = 3, min_time_s: float = 0.0, max_repeats: int = 200, budget_s: float = 20.0) -> Timing:
    """Median wall time of ``fn()`` after ``warmup`` calls (see module docs).

    Timed calls continue until there are at least ``repeats`` samples *and* ``min_time_s`` seconds have passed
    (fast cases thus take many samples, which makes the median robust on a noisy machine), but stop after
    ``max_repeats`` samples or once ``budget_s`` is spent with at least ``min_repeats`` samples.
    """
    return time_fns({"fn": fn}, device=device, warmup=warmup, repeats=repeats, min_repeats=min_repeats,
                    min_time_s=min_time_s, max_repeats=max_repeats, budget_s=budget_s)["fn"]


def time_fns(fns: dict[str, Callable[[], Any]], *, device: str | torch.device = "cpu", warmup: int = 2,
             repeats: int = 7, min_repeats: int = 3, min_time_s: float = 0.0, max_repeats: int = 200,
             budget_s: float = 20.0) -> dict[str, Timing]:
    """Like :func:`time_fn` for several functions, timed **interleaved** (a, b, a, b, ...), so that a slow
    spell of a shared machine hits all of them alike: the right way to measure a ratio between them."""
    if warmup < 0 or repeats < 1 or min_repeats < 1:
        raise ValueError(f"need warmup >= 0, repeats >= 1, min_repeats >= 1; got {warmup}, {repeats}, {min_repeats}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    n = 0
    while True:
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            samples[k].append(time.perf_counter() - t0)
        n += 1
        elapsed = time.perf_counter() - start
        if n >= max_repeats or (n >= min_repeats and elapsed > budget_s):
            break
        if n >= repeats and elapsed >= min_time_s:
            break
    return {k: Timing(median=statistics.median(v), samples=tuple(v)) for k, v in samples.items()}


class LiveTensorTracker(TorchDispatchMode):
    """Tracks the bytes of tensor storages created while the mode is active; ``peak`` is the high-water mark.

    Only storages *first produced* inside the mode count: an output that shares the storage of one of the op's
    inputs (a view, an in-place op, ``detach``, ``t()`` of a weight inside ``F.linear``) is not a new allocation,
    whether that input was made inside the mode (already counted) or existed before it (never counted). A storage
    stops counting when it is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, weakref.ref] = {}

    def _free(self, key: int, nbytes: int) -> None:
        if self._seen.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        flat_in, _ = tree_flatten((args, kwargs or {}))
        # storages of the inputs: an output aliasing one of them allocated nothing (a view or an in-place result
        # of a tensor that existed before the step would otherwise be counted as new)
        inputs = {id(a.untyped_storage()) for a in flat_in
                  if isinstance(a, torch.Tensor) and a.device.type != "meta" and a.layout == torch.strided}
        flat, _ = tree_flatten(out)
        for t in flat:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = id(st)
            if key in inputs or (key in self._seen and self._seen[key]() is st):
                continue
            nbytes = st.nbytes()
            try:
                ref = weakref.ref(st, lambda _r, k=key, n=nbytes: self._free(k, n))
            except TypeError:  # storage without weakref support: count it as never freed
                ref = lambda s=st: s  # noqa: E731
            self._seen[key] = ref
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        return out


def peak_memory(fn: Callable[[], Any], *, device: str | torch.device = "cpu") -> int:
    """Peak bytes allocated by one call of ``fn`` beyond what was allocated before it (see module docs)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        result = fn()
        synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - before
        del result
        return int(peak)
    tracker = LiveTensorTracker()
    with tracker:
        result = fn()
    del result
    return int(tracker.peak)


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``: the ``p`` in ``y ~ c x^p``.

    Needs at least two distinct positive ``x`` with positive ``y``; otherwise ``nan``.
    """
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y is not None and y > 0
           and math.isfinite(y)]
    if len({p[0] for p in pts}) < 2:
        return float("nan")
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    return sxy / sxx
