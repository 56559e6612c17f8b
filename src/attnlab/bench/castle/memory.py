"""Table (b) of the ``castle`` suite: peak memory of the attention op alone (CASTLE's *own* memory), and the
growth exponents in ``T`` of time (layer) and memory (op).

CASTLE as benchmarked (chunked / Triton), CASTLE's naive parallel form (Theorem 1, ``T x T`` matrices; run only
while its projected peak fits :func:`parallel_budget_bytes` and its projected time fits ``budget_s``), and the
standard layer's core (:func:`attnlab.ops.softmax.softmax_attention`, causal). Target: CASTLE's memory exponent
<= :data:`MEMORY_EXPONENT_TARGET`. What is counted: :data:`MEMORY_NOTE`.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any, Callable

import torch

from attnlab.bench.castle.sizes import op_inputs, sizes
from attnlab.bench.core import BenchOptions
from attnlab.bench.measure import fit_exponent, peak_memory, synchronize
from attnlab.bench.steps import GiB, MiB, Step, half_device_memory, no_grad, number, progress, short_error, step
from attnlab.masks import causal
from attnlab.ops.castle import castle_attention
from attnlab.ops.softmax import softmax_attention

__all__ = ["MEMORY_EXPONENT_TARGET", "PARALLEL_CPU_BUDGET", "MEMORY_COLUMNS", "GROWTH_COLUMNS", "MEMORY_NOTE",
           "parallel_budget_bytes", "memory_table", "growth_rows"]

MEMORY_EXPONENT_TARGET = 1.1  # CASTLE's own peak memory ~ T^p with p <= this
PARALLEL_CPU_BUDGET = 2.0 * GiB  # the naive parallel form is not run where its projected peak exceeds this on CPU

MEMORY_COLUMNS = ["T", "status", "castle fwd MiB", "castle fwd+bwd MiB", "parallel fwd MiB",
                  "parallel fwd+bwd MiB", "standard fwd MiB", "standard fwd+bwd MiB", "castle / standard fwd+bwd"]
GROWTH_COLUMNS = ["case", "time exp fwd", "time exp fwd+bwd", "mem exp fwd", "mem exp fwd+bwd", "target", "met"]

MEMORY_NOTE = (
    "Memory = CASTLE's own memory: the peak of live tensor storage allocated during one call of the attention op "
    "(after the projections), minus everything alive before the call. The six (CASTLE) or three (standard) "
    "(B, H, T, D) inputs and the output gradient are allocated before the call and not counted; counted are the "
    "output, the activations saved for backward, every temporary and the gradients w.r.t. the inputs. "
    "'fwd' is an inference forward (torch.no_grad), 'fwd+bwd' a forward with autograd plus the backward of the "
    "fixed output gradient. Projections, weights and their gradients are excluded (they are the same O(T d_model) "
    "for both mechanisms). CPU: attnlab.bench.measure.LiveTensorTracker (scratch memory inside a fused kernel "
    "that is never returned as a tensor, e.g. inside SDPA, is not seen); CUDA: max_memory_allocated minus "
    "memory_allocated before the call.")


def parallel_budget_bytes(options: BenchOptions) -> float:
    """Peak-memory budget of the naive parallel form: 2 GiB on CPU (a shared machine), half the GPU on CUDA."""
    return half_device_memory(options) if options.is_cuda else PARALLEL_CPU_BUDGET


def _op_step(name: str, options: BenchOptions, T: int, castle_impl: str) -> Step:
    """One attention op (``"standard"``, ``"castle"`` as benchmarked, or ``"parallel"``) on inputs allocated
    here, before any call."""
    n_std, n_c, _ = sizes(options)
    if name == "standard":
        xs = op_inputs(3, options, n_std, T, requires_grad=True)
        op = partial(softmax_attention, *xs, mask=causal())
    else:
        xs = op_inputs(6, options, n_c, T, requires_grad=True)
        op = partial(castle_attention, *xs, impl="parallel" if name == "parallel" else castle_impl)
    return step(op, torch.randn_like(xs[0]), leaves=xs)


def _measure_memory(fwd: Callable[[], Any], fwdbwd: Callable[[], Any], options: BenchOptions) -> dict[str, float]:
    """Peak MiB of ``fwd`` (under ``torch.no_grad``) and ``fwdbwd``, and the seconds each measurement took."""
    out: dict[str, float] = {}
    for label, fn in (("fwd", no_grad(fwd)), ("fwd+bwd", fwdbwd)):
        synchronize(options.device)
        t0 = time.perf_counter()
        out[f"{label} MiB"] = peak_memory(fn, device=options.device) / MiB
        synchronize(options.device)
        out[f"{label} s"] = time.perf_counter() - t0
    return out


def _parallel_guard(done: list[tuple[int, float, float]], T: int, options: BenchOptions) -> str | None:
    """Why the parallel form is not run at ``T`` (``None``: run it). ``done``: ``(T, peak bytes, seconds)`` of the
    fwd+bwd calls measured so far; projections use the fitted exponents (at least 2 for memory and 3 for time,
    the form's asymptotics; with nothing measured yet, 8 (B, H, T, T) tensors)."""
    _, n_c, _ = sizes(options)
    itemsize = torch.empty((), dtype=options.dtype).element_size()
    if done:
        Ts, mems, secs = zip(*done)
        pm = fit_exponent(Ts, mems) if len(done) > 1 else 2.0
        pt = fit_exponent(Ts, secs) if len(done) > 1 else 3.0
        pm = 2.0 if math.isnan(pm) else max(pm, 2.0)
        pt = 3.0 if math.isnan(pt) else max(pt, 2.0)
        mem = mems[-1] * (T / Ts[-1]) ** pm
        sec = secs[-1] * (T / Ts[-1]) ** pt
    else:
        mem = 8.0 * options.batch_size * n_c * T * T * itemsize
        sec = 0.0
    budget = parallel_budget_bytes(options)
    why = []
    if mem > budget:
        why.append(f"{mem / GiB:.1f} GiB > budget {budget / GiB:.1f} GiB")
    if sec > options.budget_s:
        why.append(f"{sec:.0f} s per fwd+bwd > budget {options.budget_s:g} s")
    return "skipped: projected " + ", ".join(why) if why else None


def memory_table(castle_status: str, parallel_status: str, std_status: str, castle_impl: str,
                 lengths: tuple[int, ...], options: BenchOptions) -> list[dict[str, Any]]:
    rows = []
    par_done: list[tuple[int, float, float]] = []
    for T in progress(list(lengths), options, "castle: memory"):
        bad = [s for s in (castle_status, std_status) if s != "ok"]
        row: dict[str, Any] = {"T": T, "status": bad[0] if bad else "ok"}
        try:
            if castle_status == "ok":
                m = _measure_memory(*_op_step("castle", options, T, castle_impl), options)
                row["castle fwd MiB"], row["castle fwd+bwd MiB"] = m["fwd MiB"], m["fwd+bwd MiB"]
            if std_status == "ok":
                m = _measure_memory(*_op_step("standard", options, T, castle_impl), options)
                row["standard fwd MiB"], row["standard fwd+bwd MiB"] = m["fwd MiB"], m["fwd+bwd MiB"]
            if parallel_status != "ok":
                row["parallel fwd+bwd MiB"] = "check failed"
            else:
                why = _parallel_guard(par_done, T, options)
                if why:
                    row["parallel fwd+bwd MiB"] = why
                else:
                    m = _measure_memory(*_op_step("parallel", options, T, castle_impl), options)
                    row["parallel fwd MiB"], row["parallel fwd+bwd MiB"] = m["fwd MiB"], m["fwd+bwd MiB"]
                    par_done.append((T, m["fwd+bwd MiB"] * MiB, m["fwd+bwd s"]))
            if isinstance(row.get("castle fwd+bwd MiB"), float) and row.get("standard fwd+bwd MiB"):
                row["castle / standard fwd+bwd"] = row["castle fwd+bwd MiB"] / row["standard fwd+bwd MiB"]
        except Exception as exc:
            row["status"] = short_error(exc)
        rows.append(row)
    return rows


def growth_rows(time_rows: list[dict[str, Any]], mem_rows: list[dict[str, Any]],
                castle_impl: str) -> list[dict[str, Any]]:
    """Fitted exponents in ``T``: time of the layers (table (a)), memory of the ops (table (b))."""
    def fit(rows: list[dict[str, Any]], key: str) -> float:
        pts = [(r["T"], number(r.get(key))) for r in rows if r.get("status") == "ok"]
        return fit_exponent([p[0] for p in pts], [p[1] for p in pts])

    out = []
    for case, prefix in ((f"castle ({castle_impl})", "castle"), ("castle parallel (naive)", "parallel"),
                         ("standard", "standard")):
        row = {"case": case, "time exp fwd": fit(time_rows, f"{prefix} fwd ms"),
               "time exp fwd+bwd": fit(time_rows, f"{prefix} fwd+bwd ms"),
               "mem exp fwd": fit(mem_rows, f"{prefix} fwd MiB"),
               "mem exp fwd+bwd": fit(mem_rows, f"{prefix} fwd+bwd MiB")}
        if prefix == "castle":
            row["target"] = f"mem exp <= {MEMORY_EXPONENT_TARGET:g}"
            p = row["mem exp fwd+bwd"]
            row["met"] = "" if math.isnan(p) else ("yes" if max(p, number(row["mem exp fwd"])) <=
                                                   MEMORY_EXPONENT_TARGET else "NO")
        out.append(row)
    return out
