"""The ``castle`` suite itself: run every table of :mod:`attnlab.bench.castle` and register the suite."""

from __future__ import annotations

import os
import time

from attnlab.bench.castle.checks import CHECK_COLUMNS, check_decode, check_layer, check_parallel
from attnlab.bench.castle.decode import (CACHE_COLUMNS, DECODE_COLUMNS, DECODE_GROWTH_COLUMNS, DECODE_TARGET,
                                         decode_contexts, decode_tables, parity_cache_row)
from attnlab.bench.castle.memory import (GROWTH_COLUMNS, MEMORY_COLUMNS, MEMORY_EXPONENT_TARGET, MEMORY_NOTE,
                                         growth_rows, memory_table, parallel_budget_bytes)
from attnlab.bench.castle.plots import plot_castle
from attnlab.bench.castle.sizes import castle_impl_of, layers, n_params, sizes
from attnlab.bench.castle.timing import TIME_COLUMNS, TIME_TARGET, time_table
from attnlab.bench.core import BenchOptions, Suite, SuiteResult, Table, register_suite
from attnlab.bench.steps import GiB, check_tolerance, short_error

__all__ = ["run_castle"]


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unavailable"


def run_castle(options: BenchOptions) -> SuiteResult:
    """Run the ``castle`` suite (see the module docstring)."""
    lengths = options.lengths_or(cpu=(512, 1024, 2048, 4096), cuda=(1024, 2048, 4096, 8192, 16384),
                                 quick=(64, 128))
    load_start = _load()
    t_start = time.perf_counter()
    n_std, n_c, D = sizes(options)
    std, cas = layers(options)
    std = std.to(device=options.device, dtype=options.dtype)
    cas = cas.to(device=options.device, dtype=options.dtype)
    castle_impl = castle_impl_of(cas, options)

    checks = [check_layer(std, options, "reference", "standard layer fwd+bwd (time table)"),
              check_layer(cas, options, "reference", f"castle layer ({castle_impl}) fwd+bwd (time table)"),
              check_parallel(options),
              check_decode(std, options, "standard decode, KV cache (decode table)"),
              check_decode(cas, options, "castle decode, UQ-KV cache (decode table)")]
    std_status, castle_status, par_status, std_dec_status, castle_dec_status = (c["status"] for c in checks)

    time_rows = time_table(std, cas, castle_status, std_status, lengths, options)
    mem_rows = memory_table(castle_status, par_status, std_status, castle_impl, lengths, options)
    growth = growth_rows(time_rows, mem_rows, castle_impl)
    contexts = decode_contexts(options, lengths)
    dec_rows, dec_growth, cache_rows = decode_tables(std, cas, castle_dec_status, std_dec_status, contexts, options)
    try:
        cache_rows.append(parity_cache_row(options))
    except Exception as exc:  # pragma: no cover - reported
        cache_rows.append({"standard heads": 14, "castle heads": short_error(exc)})

    p_std, p_c = n_params(std), n_params(cas)
    notes = [
        f"Equal parameters: standard = {n_std} heads x {D} (`MultiHeadAttention`, {p_std:,} parameters); "
        f"CASTLE = heads_for_parity({n_std}) = {n_c} heads x {D} (`CastleAttention`, {p_c:,} parameters, "
        f"{p_c / p_std:.3f}x). Both with RoPE, no dropout, batch {options.batch_size}, "
        f"{str(options.dtype).removeprefix('torch.')}.",
        f"Time: layer forward (torch.no_grad) and forward+backward (input + parameter gradients), CASTLE "
        f"impl={castle_impl}; both layers timed interleaved in this process, median after warm-up. "
        f"Target (CPU): CASTLE / standard <= {TIME_TARGET:g} for both.",
        MEMORY_NOTE + f" The naive parallel form runs only while its projected fwd+bwd peak is within "
        f"{parallel_budget_bytes(options) / GiB:.1f} GiB and its projected time within {options.budget_s:g} s. "
        f"Target: CASTLE's memory exponent <= {MEMORY_EXPONENT_TARGET:g}.",
        f"Decode: one layer step with its cache (batch 1, one new token, torch.no_grad) after a prefill of the "
        f"context; both layers interleaved; every timed call appends a token, so at most 48 are timed (the contexts timed are listed). "
        f"Target: CASTLE / standard <= {DECODE_TARGET:g}; CASTLE's latency no worse than linear in the context "
        f"(exponent <= 1). Spec section 3.4 expects about 5 t d vs 2 t d attention multiply-adds per head per step, "
        f"i.e. {5 * n_c / (2 * n_std):.2f}x the standard core's at {n_c} vs {n_std} heads.",
        "Correctness first (float64 references on CPU, relative error max|got - ref| / (1 + max|ref|), tolerance "
        f"{check_tolerance(options.dtype):g} for {str(options.dtype).removeprefix('torch.')}); a failed check "
        "replaces the speed of the cases it covers.",
        f"Machine load (1/5/15-min load average, {os.cpu_count()} cores): {load_start} at the start, {_load()} at "
        f"the end; the run took {time.perf_counter() - t_start:.0f} s. A loaded shared machine makes the times "
        f"noisy (ratios less so: interleaved).",
    ]
    tables = [
        Table(title="(a) Time: CastleAttention vs standard MultiHeadAttention", columns=TIME_COLUMNS, rows=time_rows),
        Table(title="(b) Peak memory of the attention op (CASTLE's own memory)", columns=MEMORY_COLUMNS,
              rows=mem_rows),
        Table(title="Growth exponents in T (time: layer; memory: attention op)", columns=GROWTH_COLUMNS, rows=growth),
        Table(title="(c) Decode: per-token latency of one cached layer step", columns=DECODE_COLUMNS, rows=dec_rows),
        Table(title="Decode latency growth with the context", columns=DECODE_GROWTH_COLUMNS, rows=dec_growth),
        Table(title="Cache memory (spec section 3.4)", columns=CACHE_COLUMNS, rows=cache_rows),
        Table(title="Correctness checks (float64 references)", columns=CHECK_COLUMNS, rows=checks),
    ]
    data = {"lengths": list(lengths), "contexts": list(contexts), "castle_impl": castle_impl,
            "n_std": n_std, "n_castle": n_c, "head_dim": D}
    return SuiteResult(suite="castle", options=options, tables=tables, notes=notes, data=data)


register_suite(Suite(name="castle", description="CASTLE vs standard attention at equal parameters: time, memory, "
                     "decode latency and cache size", run=run_castle, plot=plot_castle))
