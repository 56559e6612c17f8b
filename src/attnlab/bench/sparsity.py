"""The ``sparsity`` suite: masked softmax attention at decreasing mask density.

Sliding-window, strided and BigBird masks at decreasing density (:func:`sparsity_masks`) on the ``sdpa`` and
``flex`` backends of :func:`attnlab.ops.softmax.softmax_attention`, each figure also a ratio to raw causal SDPA;
each pattern family is first checked on each backend against the float64 reference.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import torch

from attnlab.bench.core import BenchOptions, Suite, SuiteResult, Table, register_suite
from attnlab.bench.measure import fit_exponent
from attnlab.bench.steps import (BASELINE, check_tolerance, correctness_status, measure_step, progress, pyplot, qkv,
                                 relative_error, save_figure, sdpa_baseline, short_error, step, with_ratios)
from attnlab.masks import Mask, bigbird, causal, dense, sliding_window, strided
from attnlab.ops.softmax import softmax_attention

__all__ = ["sparsity_masks", "run_sparsity", "plot_sparsity", "SPARSITY_BACKENDS"]


def _family(mask_name: str) -> str:
    """The pattern family of a mask's name: ``"sliding_window"`` for ``"sliding_window(64)"``."""
    return mask_name.split("(")[0]


def sparsity_masks(T: int) -> list[Mask]:
    """Sliding-window, strided and BigBird masks at decreasing density for length ``T``, plus dense causal."""
    ms = [causal()]
    ms += [sliding_window(max(1, T // d)) for d in (2, 4, 8, 16, 32, 64)]
    # strided density is about (s + T / s) / T, smallest at s = sqrt(T): go down from 4 sqrt(T) to sqrt(T)
    r = max(2, int(math.sqrt(T)))
    ms += [strided(s) for s in (4 * r, 2 * r, r)]
    ms += [bigbird(max(1, T // d), n_global=16, n_random=4, seed=0, max_len=max(T, 16)) for d in (4, 16, 64)]
    return ms


SPARSITY_BACKENDS = ("sdpa", "flex")


def run_sparsity(options: BenchOptions) -> SuiteResult:
    lengths = options.lengths_or(cpu=(2048,), cuda=(8192, 16384), quick=(256,))
    rows: list[dict[str, Any]] = []
    cases = [(T, m, b) for T in lengths for m in sparsity_masks(T) for b in SPARSITY_BACKENDS]
    baselines: dict[int, dict[str, float]] = {}
    checked: dict[tuple[str, str], str] = {}
    for T, mask, backend in progress(cases, options, "sparsity"):
        if T not in baselines:
            baselines[T] = sdpa_baseline(options, T)
            rows.append(with_ratios({"mask": BASELINE, "backend": "sdpa", "T": T, "density": 0.5 + 0.5 / T,
                                     "status": "ok", **baselines[T]}, baselines[T]))
        dens = float(dense(mask, T, T).double().mean())
        row: dict[str, Any] = {"mask": mask.name, "backend": backend, "T": T, "density": dens}
        kind = _family(mask.name)
        key = (kind, backend)
        if key not in checked:  # correctness of this pattern family on this backend at a small T, against the
            try:                # float64 reference on CPU, in the benchmarked dtype and device
                Tc = 96
                mc = next(m for m in sparsity_masks(Tc) if _family(m.name) == kind)
                q, k, v = (torch.randn(1, options.n_heads, Tc, options.d_model // options.n_heads,
                                       dtype=torch.float64) for _ in range(3))
                ref = softmax_attention(q, k, v, mask=mc, impl="reference")
                got = softmax_attention(*(t.to(device=options.device, dtype=options.dtype) for t in (q, k, v)),
                                        mask=mc, impl=backend)
                checked[key] = correctness_status(relative_error(got, ref), check_tolerance(options.dtype))
            except Exception as exc:
                checked[key] = short_error(exc)
        row["status"] = checked[key]
        if row["status"] == "ok":
            try:
                q, k, v = qkv(options, T, requires_grad=True)
                attend = partial(softmax_attention, q, k, v, mask=mask, impl=backend)
                row.update(measure_step(*step(attend, torch.randn_like(q), leaves=[q, k, v]), options))
                with_ratios(row, baselines[T])
            except Exception as exc:
                row["status"] = short_error(exc)
        rows.append(row)
    slopes = []
    for T in lengths:
        for kind in dict.fromkeys(_family(r["mask"]) for r in rows if r["T"] == T and r["mask"] != BASELINE):
            for backend in SPARSITY_BACKENDS:
                ok = [r for r in rows if r["T"] == T and r["backend"] == backend and r.get("status") == "ok"
                      and _family(r["mask"]) == kind]
                if len({r["density"] for r in ok}) < 2:
                    continue
                slopes.append({"T": T, "pattern": kind, "backend": backend,
                               "time exp fwd (vs density)": fit_exponent([r["density"] for r in ok],
                                                                         [r.get("fwd ms", 0) for r in ok]),
                               "time exp fwd+bwd (vs density)": fit_exponent([r["density"] for r in ok],
                                                                             [r.get("fwd+bwd ms", 0) for r in ok])})
    notes = ["Masked softmax attention (`attnlab.ops.softmax.softmax_attention`) over masks of decreasing density. "
             "A backend only gains from sparsity if it skips masked blocks (FlexAttention's block mask on CUDA); "
             "SDPA with a dense boolean mask costs the same at every density, and FlexAttention on CPU is not "
             "block-sparse in every build: the table reports what this machine measured.",
             "Density exponent: slope of log(time) against log(density) within a pattern family "
             "(1 = time proportional to density, 0 = no gain from sparsity)."]
    cols = ["mask", "backend", "T", "density", "status", "fwd ms", "fwd ×sdpa", "fwd+bwd ms", "fwd+bwd ×sdpa",
            "fwd MiB", "fwd+bwd MiB", "note"]
    return SuiteResult(suite="sparsity", options=options, notes=notes,
                       tables=[Table(title="Time and memory by mask density", columns=cols, rows=rows),
                               Table(title="Gain from sparsity", columns=["T", "pattern", "backend",
                                     "time exp fwd (vs density)", "time exp fwd+bwd (vs density)"], rows=slopes)])


def plot_sparsity(result: SuiteResult, stem: Path) -> list[Path]:
    plt = pyplot()
    rows = [r for r in result.tables[0].rows if r.get("status") == "ok" and r["mask"] != BASELINE]
    if not rows:
        return []
    paths = []
    for T in sorted({r["T"] for r in rows}):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
        for ax, key in zip(axes, ("fwd ×sdpa", "fwd+bwd ×sdpa")):
            for kind in dict.fromkeys(_family(r["mask"]) for r in rows):
                for backend, ls in zip(SPARSITY_BACKENDS, ("-", "--")):
                    pts = sorted((r["density"], r[key]) for r in rows if r["T"] == T and r["backend"] == backend
                                 and _family(r["mask"]) == kind and key in r)
                    if pts:
                        ax.plot(*zip(*pts), marker="o", ms=4, ls=ls, label=f"{kind} / {backend}")
            ax.axhline(1.0, color="black", lw=1, ls=":", label="raw causal SDPA")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("mask density (fraction of visible pairs)")
            ax.set_ylabel(f"time ratio to raw causal SDPA ({key.split(' ')[0]})")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"masked attention vs density, T={T}, {result.options.device}")
        paths.append(save_figure(fig, stem, f"-T{T}"))
    return paths


register_suite(Suite(name="sparsity", description="masked softmax attention at decreasing mask density",
                     run=run_sparsity, plot=plot_sparsity))
