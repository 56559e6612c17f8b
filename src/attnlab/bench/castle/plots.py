"""The ``castle`` suite's plots: time ratio vs ``T``, op memory vs ``T`` (log-log, with exponents), decode bars."""

from __future__ import annotations

from pathlib import Path

from attnlab.bench.castle.decode import DECODE_TARGET
from attnlab.bench.castle.timing import TIME_TARGET
from attnlab.bench.core import SuiteResult
from attnlab.bench.steps import number, pyplot, save_figure

__all__ = ["plot_castle"]


def _title(result: SuiteResult) -> str:
    o, d = result.options, result.data
    return (f"{o.device}, {str(o.dtype).removeprefix('torch.')}, d_model={o.d_model}: standard {d.get('n_std')}x"
            f"{d.get('head_dim')} vs CASTLE {d.get('n_castle')}x{d.get('head_dim')} heads, batch {o.batch_size}")


def plot_castle(result: SuiteResult, stem: Path) -> list[Path]:
    """Three PNGs: time ratio vs T, memory vs T (log-log, with exponents), decode latency bars."""
    plt = pyplot()
    paths: list[Path] = []
    impl = result.data.get("castle_impl", "castle")

    # time ratio vs T
    rows = [r for r in result.tables[0].rows if r.get("status") == "ok" and "fwd ratio" in r]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        Ts = [r["T"] for r in rows]
        ax.plot(Ts, [r["fwd ratio"] for r in rows], marker="o", label="forward")
        ax.plot(Ts, [r["fwd+bwd ratio"] for r in rows], marker="s", label="forward+backward")
        if not result.options.is_cuda:
            ax.axhline(TIME_TARGET, color="red", ls="--", lw=1, label=f"target {TIME_TARGET:g}x (CPU)")
        ax.axhline(1.0, color="black", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(Ts, [str(t) for t in Ts])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(f"time ratio CASTLE ({impl}) / standard")
        ax.set_title(_title(result), fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle("CASTLE layer time relative to standard causal attention")
        paths.append(save_figure(fig, stem, "-time"))

    # memory vs T, log-log
    mem = result.tables[1].rows
    growth = dict(zip(("castle", "parallel", "standard"), result.tables[2].rows))  # order of _growth_rows
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    drawn = False
    for prefix, label, color in (("castle", f"CASTLE {impl}", "tab:blue"),
                                 ("parallel", "CASTLE parallel (naive)", "tab:red"),
                                 ("standard", "standard (softmax_attention)", "black")):
        for kind, ls in (("fwd+bwd", "-"), ("fwd", "--")):
            pts = [(r["T"], r[f"{prefix} {kind} MiB"]) for r in mem
                   if isinstance(r.get(f"{prefix} {kind} MiB"), float) and r[f"{prefix} {kind} MiB"] > 0]
            if not pts:
                continue
            p_exp = number(growth.get(prefix, {}).get(f"mem exp {kind}"))
            ax.plot(*zip(*pts), marker="o", ls=ls, color=color, label=f"{label}, {kind}: T^{p_exp:.2f}")
            drawn = True
    skipped = [f"parallel at T={r['T']}: {r['parallel fwd+bwd MiB']}" for r in mem
               if isinstance(r.get("parallel fwd+bwd MiB"), str)]
    if drawn:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        Ts = [r["T"] for r in mem]
        ax.set_xticks(Ts, [str(t) for t in Ts])
        if skipped:
            ax.text(0.02, 0.98, "\n".join(skipped), transform=ax.transAxes, va="top", fontsize=7, color="tab:red")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("peak MiB allocated by the attention op")
        ax.set_title(_title(result), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.suptitle("Peak memory of the attention op vs T (fitted exponents)")
        paths.append(save_figure(fig, stem, "-memory"))
    else:
        plt.close(fig)

    # decode bars
    dec = [r for r in result.tables[3].rows if r.get("status") == "ok" and "ratio" in r]
    if dec:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        xs = range(len(dec))
        w = 0.38
        ax.bar([x - w / 2 for x in xs], [r["standard ms/token"] for r in dec], w, label="standard + KV cache")
        cb = ax.bar([x + w / 2 for x in xs], [r["castle ms/token"] for r in dec], w, label="CASTLE + UQ-KV cache")
        for x, r, bar in zip(xs, dec, cb):
            ax.annotate(f"{r['ratio']:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=9)
        ax.set_xticks(list(xs), [f"context {r['context']}" for r in dec])
        ax.set_ylabel("ms per decoded token (one layer)")
        ax.set_title(_title(result), fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(f"Decode latency per token (target CASTLE <= {DECODE_TARGET:g}x)")
        paths.append(save_figure(fig, stem, "-decode"))
    return paths
