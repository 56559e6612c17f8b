"""The ``mechanisms`` suite: every registered mechanism's time, peak memory and growth in ``T``.

Each figure is also a ratio to raw causal SDPA at the same ``T`` (see :mod:`attnlab.bench.steps`); time ratios
use SDPA timed interleaved with the mechanism's own calls. Each layer, as benchmarked, is first compared with its
reference backend in float64; a failure is reported instead of a speed.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from attnlab.bench.core import BenchOptions, Suite, SuiteResult, Table, register_suite
from attnlab.bench.measure import fit_exponent
from attnlab.bench.steps import (BASELINE, MiB, check_tolerance, correctness_status, half_device_memory,
                                 layer_step, measure_step, progress, pyplot, relative_error, save_figure,
                                 sdpa_baseline, sdpa_step, short_error, with_ratios)
from attnlab.layers.registry import MECHANISMS, MechanismSpec

__all__ = ["run_mechanisms", "plot_mechanisms", "MAIN_COLUMNS", "GROWTH_COLUMNS"]

MAIN_COLUMNS = ["mechanism", "impl", "T", "status", "fwd ms", "baseline fwd ms", "fwd ×sdpa", "fwd+bwd ms",
                "baseline fwd+bwd ms", "fwd+bwd ×sdpa",
                "fwd MiB", "fwd mem ×sdpa", "fwd+bwd MiB", "fwd+bwd mem ×sdpa", "note"]
GROWTH_COLUMNS = ["mechanism", "time exp fwd", "time exp fwd+bwd", "mem exp fwd", "mem exp fwd+bwd"]


def _specs(options: BenchOptions) -> list[MechanismSpec]:
    return MECHANISMS.items() if options.mechanisms is None else MECHANISMS.get_all(options.mechanisms)


def _correctness(spec: MechanismSpec, options: BenchOptions, T: int) -> str:
    """The layer as benchmarked (default backend, bench dtype, device) vs its reference backend in float64 on
    CPU: ``"ok"`` or the failure."""
    try:
        torch.manual_seed(0)
        layer = spec.build(d_model=options.d_model, n_heads=options.n_heads).eval()
        ref = copy.deepcopy(layer).to(dtype=torch.float64)
        ref.impl = spec.backends[0]
        layer = layer.to(device=options.device, dtype=options.dtype)
        x = torch.randn(options.batch_size, T, options.d_model, dtype=torch.float64)
        with torch.no_grad():
            err = relative_error(layer(x.to(device=options.device, dtype=options.dtype)), ref(x))
        return correctness_status(err, check_tolerance(options.dtype))
    except Exception as exc:  # reported, not hidden
        return short_error(exc)


def _projection_guard(done: list[dict[str, Any]], T: int, options: BenchOptions) -> str | None:
    """Why length ``T`` is not measured, projected from the lengths measured so far (``None``: measure it).

    The peak memory and the time of one forward+backward are extrapolated with the growth exponent fitted so far
    (or quadratically from a single point); a case over half the device memory, or slower than ``budget_s``
    per call, is reported as not measured rather than risking the machine.
    """
    pts = [r for r in done if r.get("fwd+bwd MiB", 0) > 0 and r.get("fwd+bwd ms", 0) > 0]
    if not pts:
        return None
    last = pts[-1]
    notes = []
    for key, limit, unit in (("fwd+bwd MiB", half_device_memory(options) / MiB, "MiB"),
                             ("fwd+bwd ms", options.budget_s * 1e3, "ms")):
        p = fit_exponent([r["T"] for r in pts], [r[key] for r in pts]) if len(pts) > 1 else 2.0
        p = 2.0 if math.isnan(p) else max(p, 1.0)
        proj = last[key] * (T / last["T"]) ** p
        if proj > limit:
            notes.append(f"not measured: projected {key.split()[0]} {proj:.0f} {unit} > limit {limit:.0f} {unit}")
    return "; ".join(notes) or None


def _growth_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in dict.fromkeys(r["mechanism"] for r in rows):
        ok = [r for r in rows if r["mechanism"] == name and r.get("status") == "ok"]
        g: dict[str, Any] = {"mechanism": name}
        for col, key in (("time exp fwd", "fwd ms"), ("time exp fwd+bwd", "fwd+bwd ms"),
                         ("mem exp fwd", "fwd MiB"), ("mem exp fwd+bwd", "fwd+bwd MiB")):
            g[col] = fit_exponent([r["T"] for r in ok], [r.get(key, float("nan")) for r in ok])
        out.append(g)
    return out


def run_mechanisms(options: BenchOptions) -> SuiteResult:
    lengths = options.lengths_or(cpu=(256, 1024, 4096), cuda=(1024, 4096, 16384), quick=(128, 256))
    specs = _specs(options)
    rows: list[dict[str, Any]] = []
    baselines = {}
    for T in progress(list(lengths), options, "sdpa baseline"):
        baselines[T] = sdpa_baseline(options, T)
        rows.append(with_ratios({"mechanism": BASELINE, "impl": "sdpa", "T": T, "status": "ok", **baselines[T]},
                                baselines[T]))
    for spec in progress(specs, options, "mechanisms"):
        status = _correctness(spec, options, min(64, min(lengths)))
        torch.manual_seed(0)
        layer = None
        done: list[dict[str, Any]] = []
        for T in lengths:
            row: dict[str, Any] = {"mechanism": spec.name, "T": T, "status": status}
            guard = _projection_guard(done, T, options) if status == "ok" else None
            if guard:
                row["note"] = guard
            elif status == "ok":
                try:
                    if layer is None:
                        layer = spec.build(d_model=options.d_model, n_heads=options.n_heads).eval().to(
                            device=options.device, dtype=options.dtype)
                    row["impl"] = str(getattr(layer, "impl", ""))
                    x = torch.randn(options.batch_size, T, options.d_model, device=options.device,
                                    dtype=options.dtype, requires_grad=True)
                    row.update(measure_step(*layer_step(layer, x), options, baseline=sdpa_step(options, T)))
                    with_ratios(row, baselines[T])
                    if getattr(type(layer), "token_inputs", ()):  # e.g. future-light: is_visual is a per-call input
                        row["note"] = (f"timed without its per-call inputs ({', '.join(type(layer).token_inputs)}): "
                                       "its plain causal path; `attnlab bench future` times the merge")
                    done.append(row)
                except Exception as exc:
                    row["status"] = short_error(exc)
            rows.append(row)
    growth = _growth_rows(rows)
    notes = [f"Every ratio divides by raw causal SDPA (`F.scaled_dot_product_attention(q, k, v, is_causal=True)`, "
             f"q/k/v (B={options.batch_size}, H={options.n_heads}, T, {options.d_model // options.n_heads})) "
             f"at the same T, measured in this process; time ratios use SDPA timed interleaved with the mechanism's own calls "
             f"(a, b, a, b, ...), so a slow spell of the machine hits both alike. A layer also pays its projections, so ratios > 1 are "
             f"expected; `attnlab bench overhead` separates the module overhead.",
             "Correctness first: each layer, as benchmarked, is compared with its reference backend in float64 at "
             f"T={min(64, min(lengths))} (relative error max|got - ref| / (1 + max|ref|)); a failure is reported "
             "instead of a speed.",
             "Growth exponents: least-squares slope of log(cost) against log(T) over the lengths measured."]
    return SuiteResult(suite="mechanisms", options=options,
                       tables=[Table(title="Time and peak memory", columns=MAIN_COLUMNS, rows=rows),
                               Table(title="Growth exponents in T", columns=GROWTH_COLUMNS, rows=growth)],
                       notes=notes, data={"lengths": list(lengths)})


def plot_mechanisms(result: SuiteResult, stem: Path) -> list[Path]:
    plt = pyplot()
    rows = [r for r in result.tables[0].rows if r.get("status") == "ok"]
    names = list(dict.fromkeys(r["mechanism"] for r in rows))
    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5), dpi=110)
    panels = [("fwd ms", "forward time (ms)"), ("fwd+bwd ms", "forward+backward time (ms)"),
              ("fwd MiB", "forward peak memory (MiB)"), ("fwd+bwd MiB", "forward+backward peak memory (MiB)")]
    cmap = plt.get_cmap("tab20")
    for ax, (key, label) in zip(axes.flat, panels):
        for i, n in enumerate(names):
            pts = [(r["T"], r[key]) for r in rows if r["mechanism"] == n and r.get(key, 0) > 0]
            if not pts:
                continue
            xs, ys = zip(*pts)
            base = n == BASELINE
            ax.plot(xs, ys, marker="o", ms=4, lw=2.5 if base else 1.3, ls="--" if base else "-",
                    color="black" if base else cmap(i % 20), label=n)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    o = result.options
    fig.suptitle(f"attnlab mechanisms on {o.device} ({str(o.dtype).removeprefix('torch.')}, d_model={o.d_model}, "
                 f"n_heads={o.n_heads}, batch={o.batch_size})")
    return [save_figure(fig, stem, rect=(0, 0, 0.8, 0.97))]


register_suite(Suite(name="mechanisms", description="every registered mechanism: time, memory, growth in T",
                     run=run_mechanisms, plot=plot_mechanisms))
