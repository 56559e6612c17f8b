"""The ``deconstructed`` suite: the six "Deconstructing Attention" variants against standard attention.

Per variant and length ``T``: forward and forward+backward time of the layer (the ``standard`` layer timed
interleaved with it, a, b, a, b, ..., for the ratio), peak memory and its ratio, fitted growth exponents in ``T``,
and the decoding state per token: the bytes a layer's cache holds after a prefill of ``T`` and of ``2T`` tokens
(batch 1), and their difference per added token (what grows with the context). Bytes are allocated storage: a
cache that allocates capacity ahead (the KV cache) shows steps rather than a smooth per-token growth. Each layer is first checked against
its float64 reference backend; a failure is reported instead of a speed. The paper's analytic costs (Xue et al.,
arXiv:2510.11602v1, Tbl. 5, 6, 8; spec 7.4) are printed beside the measurements for comparison; they count GEMMs
at 16 bits, these are measured float32 layers, so compare growth, not constants.

Standalone layers (no model): RndEmbQK and FixedSeqQK read their fixed stream from the layer's own ``eps`` (the
model's stream would add one extra row per batch), StaticEmbQK its input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnlab.bench.core import BenchOptions, Suite, SuiteResult, Table, register_suite
from attnlab.bench.measure import fit_exponent
from attnlab.bench.steps import layer_step, log_log_panels, measure_step, progress, save_figure, short_error
from attnlab.layers import registry

__all__ = ["run_deconstructed", "DECON_MECHANISMS", "PAPER_COST", "cache_bytes"]

DECON_MECHANISMS = ["decon_mlp", "decon_approx", "decon_nonapprox", "decon_rndembqk", "decon_fixedseqqk",
                    "decon_staticembqk"]
#: spec 7.4 (paper Tbl. 5 time, Tbl. 8 cache bytes per layer at 16 bits; B batch, L length, d hidden, h heads)
PAPER_COST = {
    "standard": ("O(BL²d + BLd²)", "4BLd"),
    "decon_mlp": ("O(BLd²)", "0"),
    "decon_approx": ("O(BLd²)", "6Bd + 4Bd²/h"),
    "decon_nonapprox": ("O(BLd²)", "2Bd + 4Bh"),
    "decon_rndembqk": ("O(BL²d + BLd²)", "2(B+1)Ld"),
    "decon_fixedseqqk": ("O(BL²d + BLd²)", "2(B+1)Ld"),
    "decon_staticembqk": ("O(BL²d + BLd²)", "4BLd"),
}
MAIN_COLUMNS = ["mechanism", "T", "status", "fwd ms", "fwd ×standard", "fwd+bwd ms", "fwd+bwd ×standard",
                "fwd+bwd MiB", "mem ×standard", "note"]
GROWTH_COLUMNS = ["mechanism", "time exp fwd", "time exp fwd+bwd", "mem exp fwd+bwd", "paper time (Tbl. 5)"]
STATE_COLUMNS = ["mechanism", "T", "state bytes at T", "state bytes at 2T", "bytes per added token",
                 "paper cache bytes (Tbl. 8, 16-bit)"]


def cache_bytes(obj: Any, _seen: set[int] | None = None) -> int:
    """Bytes of every tensor a cache holds (attributes, tuples, lists, dicts; each storage counted once)."""
    seen = set() if _seen is None else _seen
    if isinstance(obj, Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, (list, tuple)):
        return sum(cache_bytes(o, seen) for o in obj)
    if isinstance(obj, dict):
        return sum(cache_bytes(o, seen) for o in obj.values())
    if hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        return sum(cache_bytes(o, seen) for o in vars(obj).values())
    return 0


def _state(name: str, options: BenchOptions, T: int) -> dict[str, Any]:
    torch.manual_seed(0)
    layer = registry.build(name, d_model=options.d_model, n_heads=options.n_heads).eval()
    out: dict[str, Any] = {"mechanism": name, "T": T, "paper cache bytes (Tbl. 8, 16-bit)": PAPER_COST[name][1]}
    sizes = []
    for L in (T, 2 * T):
        cache = layer.new_cache(1, dtype=torch.float32)
        with torch.no_grad():
            layer(torch.randn(1, L, options.d_model), cache=cache)
        sizes.append(cache_bytes(cache))
    out.update({"state bytes at T": sizes[0], "state bytes at 2T": sizes[1],
                "bytes per added token": (sizes[1] - sizes[0]) / T})
    return out


def run_deconstructed(options: BenchOptions) -> SuiteResult:
    from attnlab.bench.mechanisms import _correctness

    lengths = options.lengths_or(cpu=(256, 1024, 4096), cuda=(1024, 4096, 16384), quick=(64, 128))
    names = ["standard", *DECON_MECHANISMS]
    if options.mechanisms is not None:
        names = ["standard", *[n for n in DECON_MECHANISMS if n in options.mechanisms]]
    rows: list[dict[str, Any]] = []
    growth: list[dict[str, Any]] = []
    states: list[dict[str, Any]] = []
    d = options.d_model
    for name in progress(names, options, "deconstructed"):
        spec = registry.get(name)
        status = _correctness(spec, options, min(64, min(lengths)))
        mine: list[dict[str, Any]] = []
        for T in lengths:
            row: dict[str, Any] = {"mechanism": name, "T": T, "status": status}
            if status == "ok":
                try:
                    torch.manual_seed(0)
                    layer = spec.build(d_model=d, n_heads=options.n_heads).to(options.device, options.dtype)
                    base = registry.build("standard", d_model=d, n_heads=options.n_heads).to(options.device,
                                                                                              options.dtype)
                    x = torch.randn(options.batch_size, T, d, device=options.device, dtype=options.dtype,
                                    requires_grad=True)
                    xb = x.detach().clone().requires_grad_()
                    row.update(measure_step(*layer_step(layer, x), options, baseline=layer_step(base, xb)))
                    row["fwd ×standard"] = row["fwd ms"] / row["baseline fwd ms"]
                    if "fwd+bwd ms" in row:
                        row["fwd+bwd ×standard"] = row["fwd+bwd ms"] / row["baseline fwd+bwd ms"]
                    if "fwd+bwd MiB" in row:
                        ref = row if name == "standard" else next(
                            (r for r in rows if r["mechanism"] == "standard" and r["T"] == T), None)
                        if ref and ref.get("fwd+bwd MiB"):
                            row["mem ×standard"] = row["fwd+bwd MiB"] / ref["fwd+bwd MiB"]
                except Exception as exc:  # reported, not hidden
                    row["status"] = short_error(exc)
            mine.append(row)
        rows += mine
        ok = [r for r in mine if r["status"] == "ok"]
        g: dict[str, Any] = {"mechanism": name, "paper time (Tbl. 5)": PAPER_COST[name][0]}
        if len(ok) >= 2:
            xs = [r["T"] for r in ok]
            for col, key in (("time exp fwd", "fwd ms"), ("time exp fwd+bwd", "fwd+bwd ms"),
                             ("mem exp fwd+bwd", "fwd+bwd MiB")):
                if all(r.get(key) for r in ok):
                    g[col] = fit_exponent(xs, [r[key] for r in ok])
        growth.append(g)
        try:
            states.append(_state(name, options, min(lengths)))
        except Exception as exc:
            states.append({"mechanism": name, "T": min(lengths), "state bytes at T": short_error(exc)})
    notes = [f"d_model {d}, {options.n_heads} heads, batch {options.batch_size}, {str(options.dtype).split('.')[-1]} "
             f"on {options.device}; ratios divide by the `standard` layer timed interleaved with each case.",
             "Decode state: float32 cache of one sequence after a prefill of T and 2T tokens; RndEmbQK/FixedSeqQK "
             "standalone keep a block of fixed queries and keys ahead (shared by the batch).",
             "Paper columns: Xue et al., arXiv:2510.11602v1, Tbl. 5 (time) and Tbl. 8 (cache bytes per layer at "
             "16 bits), as collected in spec 7.4."]
    return SuiteResult(suite="deconstructed", options=options, notes=notes,
                       tables=[Table(title="time and peak memory vs standard", columns=MAIN_COLUMNS, rows=rows),
                               Table(title="growth in T (fitted log-log exponents)", columns=GROWTH_COLUMNS,
                                     rows=growth),
                               Table(title="decoding state per sequence", columns=STATE_COLUMNS, rows=states)],
                       data={"rows": rows})


def plot_deconstructed(result: SuiteResult, stem: Path) -> list[Path]:
    fig = log_log_panels(result.data["rows"], series="mechanism", x="T", xlabel="T", legend_fontsize=7,
                         panels=[("fwd+bwd ms", "forward+backward time", "ms"),
                                 ("fwd+bwd MiB", "forward+backward peak memory", "MiB")])
    return [save_figure(fig, stem)]


register_suite(Suite(name="deconstructed", description="the six deconstructed-attention variants vs standard: time, "
                     "memory, growth in T, decoding state per token", run=run_deconstructed, plot=plot_deconstructed))
