"""The ``overhead`` suite: the ``standard`` module against its own projections + raw SDPA written by hand.

Module overhead = module forward / (the module's own projections + raw causal SDPA + its output projection,
same weights); the target is <= :data:`OVERHEAD_TARGET` at ``T=1024``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.bench.core import BenchOptions, Suite, SuiteResult, Table, register_suite
from attnlab.bench.steps import (Step, check_tolerance, correctness_status, measure_steps_interleaved, progress,
                                 pyplot, qkv, relative_error, save_figure, short_error, step, with_ratios)
from attnlab.layers.registry import MECHANISMS

__all__ = ["run_overhead", "plot_overhead", "OVERHEAD_MECHANISM", "OVERHEAD_TARGET"]

OVERHEAD_MECHANISM = "standard"
OVERHEAD_TARGET = 1.15
_RAW = "raw SDPA (causal)"
_HAND = "projections + SDPA by hand"
_MODULE = f"{OVERHEAD_MECHANISM} module"


def _hand_path(layer: nn.Module, options: BenchOptions) -> Callable[[Tensor], Tensor]:
    """The module's own projections (read from its ``nn.Linear`` submodules) around raw causal SDPA.

    Supports a fused ``(d_model -> 3 * H * D)`` projection followed by an output projection, or four separate
    q/k/v/output projections in that order. The correctness check catches a wrong reading of the layout.
    """
    lins = [m for m in layer.modules() if isinstance(m, nn.Linear)]
    H = options.n_heads
    if len(lins) == 2 and lins[0].out_features % 3 == 0:
        qkv_proj, o = lins
        D = qkv_proj.out_features // (3 * H)

        def fused(x: Tensor) -> Tensor:
            B, T, _ = x.shape
            q, k, v = qkv_proj(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
            return o(y.transpose(1, 2).reshape(B, T, H * D))

        return fused
    if len(lins) == 4:
        wq, wk, wv, o = lins
        D = wq.out_features // H

        def split(x: Tensor) -> Tensor:
            B, T, _ = x.shape
            q, k, v = (w(x).view(B, T, -1, D).transpose(1, 2) for w in (wq, wk, wv))  # (B, H(_kv), T, D)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != H)
            return o(y.transpose(1, 2).reshape(B, T, H * D))

        return split
    raise ValueError(f"cannot read the projections of {type(layer).__name__}: found {len(lins)} nn.Linear "
                     "submodules, expected a fused qkv + output (2) or q, k, v, output (4)")


def _module_and_hand(options: BenchOptions, T: int) -> tuple[nn.Module | None, Callable | None, str]:
    """The layer (rope and dropout off, so the hand path does the same work), its hand path, and the status of
    their comparison at length ``T``."""
    try:
        torch.manual_seed(0)
        layer = MECHANISMS.get(OVERHEAD_MECHANISM).build(d_model=options.d_model, n_heads=options.n_heads,
                                                          rope=False, dropout=0.0).eval()
        layer = layer.to(device=options.device, dtype=options.dtype)
        hand = _hand_path(layer, options)
        x = torch.randn(options.batch_size, T, options.d_model, device=options.device, dtype=options.dtype)
        with torch.no_grad():
            err = relative_error(layer(x), hand(x))
        return layer, hand, correctness_status(err, check_tolerance(options.dtype), what="module vs hand path ")
    except Exception as exc:
        return None, None, short_error(exc)


def run_overhead(options: BenchOptions) -> SuiteResult:
    lengths = options.lengths_or(cpu=(1024,), cuda=(1024, 4096), quick=(256,))
    rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    notes = [f"Module overhead = `{OVERHEAD_MECHANISM}` module forward / (the module's own projections + raw causal "
             f"SDPA + its output projection, written by hand, same weights). Target: <= {OVERHEAD_TARGET}x at T=1024 "
             "(forward, inference). The layer is built with rope=False, dropout=0.0 so that the hand path does "
             "the same work; raw SDPA alone is reported too."]
    layer, hand, status = _module_and_hand(options, min(64, min(lengths)))
    for T in progress(list(lengths), options, "overhead"):
        q, k, v = qkv(options, T, requires_grad=True)
        steps: dict[str, Step] = {
            _RAW: step(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), torch.randn_like(q),
                       leaves=[q, k, v])}
        if status == "ok":
            x = torch.randn(options.batch_size, T, options.d_model, device=options.device, dtype=options.dtype,
                            requires_grad=True)
            g = torch.randn_like(x)
            for case, fn in ((_HAND, hand), (_MODULE, layer)):
                steps[case] = step(lambda fn=fn: fn(x), g, leaves=[x], module=layer)
        measured = measure_steps_interleaved(steps, options)
        base = measured[_RAW]
        for case, m in measured.items():
            rows.append(with_ratios({"case": case, "T": T, "status": "ok", **m}, base))
        if status != "ok":
            rows.append({"case": _MODULE, "T": T, "status": status})
            continue
        mod, hd = measured[_MODULE], measured[_HAND]
        r_f, r_fb = mod["fwd ms"] / hd["fwd ms"], mod["fwd+bwd ms"] / hd["fwd+bwd ms"]
        summary.append({"T": T, "module / hand fwd": r_f, "module / hand fwd+bwd": r_fb,
                        "module / raw SDPA fwd": mod["fwd ms"] / base["fwd ms"],
                        "target": f"<= {OVERHEAD_TARGET}" if T == 1024 else "",
                        "met": ("yes" if r_f <= OVERHEAD_TARGET else "NO") if T == 1024 else ""})
    cols = ["case", "T", "status", "fwd ms", "fwd ×sdpa", "fwd+bwd ms", "fwd+bwd ×sdpa", "fwd MiB", "fwd+bwd MiB"]
    return SuiteResult(suite="overhead", options=options, notes=notes,
                       tables=[Table(title="Time and memory", columns=cols, rows=rows),
                               Table(title="Module overhead", columns=["T", "module / hand fwd",
                                     "module / hand fwd+bwd", "module / raw SDPA fwd", "target", "met"],
                                     rows=summary)])


def plot_overhead(result: SuiteResult, stem: Path) -> list[Path]:
    plt = pyplot()
    rows = [r for r in result.tables[0].rows if r.get("status") == "ok"]
    if not rows:
        return []
    Ts = sorted({r["T"] for r in rows})
    cases = list(dict.fromkeys(r["case"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    width = 0.8 / len(cases)
    for ax, key in zip(axes, ("fwd ms", "fwd+bwd ms")):
        for i, c in enumerate(cases):
            ys = [next((r[key] for r in rows if r["case"] == c and r["T"] == T), 0.0) for T in Ts]
            ax.bar([j + i * width for j in range(len(Ts))], ys, width, label=c)
        ax.set_xticks([j + width * (len(cases) - 1) / 2 for j in range(len(Ts))], [f"T={T}" for T in Ts])
        ax.set_ylabel(key)
        ax.set_title(key.replace(" ms", "") + " time")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"module overhead of '{OVERHEAD_MECHANISM}' on {result.options.device}")
    return [save_figure(fig, stem)]


register_suite(Suite(name="overhead", description=f"'{OVERHEAD_MECHANISM}' module vs its projections + raw SDPA",
                     run=run_overhead, plot=plot_overhead))
