"""The report of ``attnlab study deconstructing``: leaderboard (Markdown, CSV), the spec 12.3 table, plots (PNG)
and one HTML page.

Statistics are :mod:`attnlab.compare.report`'s: mean ± sample std over seeds, and a difference counts as beyond seed
noise when ``|Δ| > 2 x`` the Welch standard error of the difference of means (:func:`~attnlab.compare.report.
significance`). A diverged seed (non-finite loss) is counted in its row and left out of the mean, never dropped
silently. Paper figures quoted in the spec 12.3 table are from Xue, Moosavi and Aletras, arXiv:2510.11602v1,
Tbl. 1 and Tbl. 4 (500M parameters, WikiText PPL); ratios and log-ratios are the spec's arithmetic.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import statistics
from pathlib import Path
from typing import Any

from attnlab.compare.report import SIGNIFICANCE_RULE, _provenance, significance
from attnlab.layers.deconstructed.principles import principles_of
from attnlab.study.grid import ABLATION_LAYOUTS, ABLATION_VARIANTS

__all__ = ["write_study_report", "model_rows", "direction_table", "layout_table"]

SHORT = {"standard": "Standard", "decon_mlp": "MLP", "decon_approx": "Approx.", "decon_nonapprox": "Non-apx.",
         "decon_rndembqk": "RndEmbQK", "decon_fixedseqqk": "FixedSeqQK", "decon_staticembqk": "StaticEmbQK"}


def _ms(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) >= 2 else None)


def _losses(res: Any, variant: str, layout: str, key: str = "val") -> list[float]:
    """Per-seed finite losses of one model: ``key`` ``val`` (whole split), ``skip:<part>``, ``ctx:<T>``."""
    out = []
    for (v, lay, _s), r in sorted(res.runs.items()):
        if (v, lay) != (variant, layout) or r.get("diverged"):
            continue
        if key == "val":
            x = r["result"]["val"]["loss"]
        elif key.startswith("skip:"):
            x = r["eval"].get("skip", {}).get(key[5:], {}).get("loss")
        else:
            x = r["eval"]["context_loss"].get(key[4:])
        if x is not None and math.isfinite(x):
            out.append(float(x))
    return out


def model_rows(cfg: Any, res: Any) -> list[dict[str, Any]]:
    """One row per trained model, then one per SKIP evaluation (configuration ``skip-block``/``skip-mixer``)."""
    base = _losses(res, "standard", "uniform")
    std_tps = _ms([r["result"]["tokens_per_s"] for (v, lay, _), r in res.runs.items()
                   if (v, lay) == ("standard", "uniform") and "result" in r])[0]
    char = cfg.base.data.tokenizer == "char"
    rows = []

    def row(variant: str, config: str, losses: list[float], runs: list[dict[str, Any]], ref: list[float],
            ref_name: str) -> dict[str, Any]:
        m, s = _ms(losses)
        verdict, se = significance(losses, ref) if (variant, config) != ("standard", "uniform") else ("baseline", None)
        trained = [r for r in runs if "result" in r]
        tps = _ms([r["result"]["tokens_per_s"] for r in trained])[0]
        pc = next((r["eval"]["parameter_counts"] for r in trained if "eval" in r), {})
        return {
            "variant": variant, "principles": principles_of(variant).label(), "config": config, "seeds": len(runs),
            "diverged": sum(1 for r in runs if r.get("diverged")),
            "params": pc.get("total"), "params_attention": pc.get("attention"),
            "val_loss_mean": m, "val_loss_std": s,
            "val_ppl": math.exp(m) if m is not None else None,
            "val_bpc": m / math.log(2) if (m is not None and char) else None,
            "delta_vs": ref_name,
            "delta": (m - statistics.fmean(ref)) if (m is not None and ref) else None,
            "welch_se": se, "beyond_noise": verdict,
            "tokens_per_s": tps, "tps_ratio_vs_standard": (tps / std_tps) if (tps and std_tps) else None,
            "wall_s": _ms([r["result"]["wall_s"] for r in trained])[0],
            "per_seed": ";".join(f"{x:.4f}" for x in losses),
        }

    for variant, layout in cfg.models():
        runs = [r for (v, lay, _), r in sorted(res.runs.items()) if (v, lay) == (variant, layout)]
        rows.append(row(variant, layout, _losses(res, variant, layout), runs, base, "standard"))
    for variant, layout in cfg.models():
        if layout == "uniform" and variant != "standard":
            continue
        runs = [r for (v, lay, _), r in sorted(res.runs.items()) if (v, lay) == (variant, layout)]
        for part in cfg.skip_parts:
            ls = _losses(res, variant, layout, f"skip:{part}")
            if ls:
                own = _losses(res, variant, layout)
                name = "Standard-SKIP (odd layers)" if variant == "standard" else "SKIP (variant layers)"
                rows.append(row(variant, f"{layout} {name}, {part}", ls, runs, own, f"{variant} {layout} unskipped"))
                rows[-1]["tokens_per_s"] = rows[-1]["tps_ratio_vs_standard"] = rows[-1]["wall_s"] = None
    return rows


def _f(x: Any, spec: str = ".4f") -> str:
    return "—" if x is None else format(x, spec)


# ---------------------------------------------------------------------------------------- spec 12.3 directions
def _verdict(a: list[float], b: list[float], expect: str) -> tuple[str, str]:
    """Is ``a`` (losses) worse (``expect="worse"``) or better than ``b``? -> (verdict, numbers)."""
    if not a or not b:
        return "not run", ""
    v, se = significance(a, b)
    d = statistics.fmean(a) - statistics.fmean(b)
    num = f"Δ {d:+.3f} (×{math.exp(d):.2f} PPL" + (f", 2SE {2 * se:.3f})" if se is not None else ")")
    if v.startswith("unknown"):
        return "unknown (needs >= 2 seeds)", num
    if v == "no":
        return "within seed noise", num
    worse = v.endswith("worse") or (v == "yes" and d > 0)
    return ("same direction" if worse == (expect == "worse") else "opposite direction"), num


def _combine(verdicts: list[str]) -> str:
    vs = [v for v in verdicts if v != "not run"]
    if not vs:
        return "not run"
    if any(v == "opposite direction" for v in vs):
        return "opposite direction" if all(v == "opposite direction" for v in vs) else "mixed: " + ", ".join(vs)
    if all(v == "same direction" for v in vs):
        return "same direction"
    if all(v == "within seed noise" for v in vs):
        return "within seed noise"
    return "mixed: " + ", ".join(sorted(set(vs)))


def direction_table(cfg: Any, res: Any) -> list[tuple[str, str, str, str]]:
    """The rows of spec 12.3: (direction, paper figure, verdict, our numbers)."""
    L = lambda v, lay, k="val": _losses(res, v, lay, k)  # noqa: E731
    std = L("standard", "uniform")
    have = set(cfg.variants)
    ctxs = [str(c) for c in cfg.eval_contexts()]
    lo, hi = ctxs[0], ctxs[-1]
    out = []

    # 1. uniform MLP far worse than every mixing variant but Non-approximate
    others = [v for v in ("decon_approx", "decon_rndembqk", "decon_fixedseqqk", "decon_staticembqk") if v in have]
    if "decon_mlp" in have:
        vs = [_verdict(L("decon_mlp", "uniform"), L(v, "uniform"), "worse") for v in ["standard", *others]]
        mlp = L("decon_mlp", "uniform")
        bg = res.bigram.get("val_loss")
        num = f"vs Standard {vs[0][1]}" + (f"; MLP − bigram {statistics.fmean(mlp) - bg:+.3f} nats" if mlp and bg else "")
        out.append(("Uniform MLP far worse than every mixing variant but Non-approximate",
                    "993.5 vs 38.1 (26×, Δlog 3.26)", _combine([v for v, _ in vs]), num))
        a, b = L("decon_mlp", "uniform", f"ctx:{lo}"), L("decon_mlp", "uniform", f"ctx:{hi}")
        if a and b:
            d = statistics.fmean(a) - statistics.fmean(b)
            v = "same direction" if abs(d) < 1e-3 else _verdict(a, b, "worse")[0].replace("same direction", "opposite direction")
            out.append(("Uniform MLP flat in context length", "993.5 at every length", v,
                        f"loss at T={lo} minus T={hi}: {d:+.5f} nats"))
    if "decon_nonapprox" in have:
        v, num = _verdict(L("decon_nonapprox", "uniform"), std, "worse")
        div = sum(1 for (vv, lay, _), r in res.runs.items() if (vv, lay) == ("decon_nonapprox", "uniform")
                  and r.get("diverged"))
        lg = [r["eval"]["max_logit"] for (vv, lay, _), r in res.runs.items()
              if (vv, lay) == ("decon_nonapprox", "uniform") and "eval" in r]
        mx = max((x for row in lg for x in row if x is not None), default=None)
        out.append(("Uniform Non-approximate collapses", "9E+4 (Tbl. 1) or 9025.9 (Tbl. 4): ≥237× (Δlog ≥ 5.47)", v,
                    f"{num}; diverged seeds {div}; largest |logit| {_f(mx, '.3g')}"))
    uni = {v: L(v, "uniform") for v in cfg.variants if L(v, "uniform")}
    if "decon_approx" in uni and len(uni) > 1:
        ranked = sorted(uni, key=lambda v: statistics.fmean(uni[v]))
        rest = [v for v in ranked if v != "decon_approx"]
        vs = [_verdict(uni[v], uni["decon_approx"], "worse")[0] for v in rest]
        out.append(("Uniform Approximate best uniform variant", "47.9 (1.26×, Δlog 0.23)", _combine(vs),
                    "rank " + " < ".join(SHORT[v] for v in ranked)))
    fixed = [v for v in ("decon_rndembqk", "decon_fixedseqqk", "decon_staticembqk") if v in uni]
    if fixed:
        vs = [_verdict(uni[v], std, "worse") for v in fixed]
        out.append(("Fixed-map and static uniform variants ≈2× Standard", "79.1–84.8 (2.08–2.23×, Δlog 0.73–0.80)",
                    _combine([v for v, _ in vs]), "; ".join(f"{SHORT[v]} {n}" for v, (_, n) in zip(fixed, vs))))
    hyb = {v: L(v, "hybrid") for v in cfg.variants if L(v, "hybrid")}
    close = [v for v in hyb if v != "decon_mlp"]
    if close and std:
        parts, vs = [], []
        for v in close:
            d = statistics.fmean(hyb[v]) - statistics.fmean(std)
            sig = _verdict(hyb[v], std, "worse")[0]
            vs.append("same direction" if (sig == "within seed noise" or abs(d) <= 0.05) else "opposite direction")
            parts.append(f"{SHORT[v]} Δ {d:+.3f} ({sig})")
        out.append(("Hybrids within ~1.5 PPL of Standard, except MLP (close: Δ ≤ 0.05 nats or within noise)",
                    "38.5–39.4 (1.01–1.03×, Δlog 0.010–0.034)", _combine(vs), "; ".join(parts)))
    if "decon_mlp" in hyb and close:
        vs = [_verdict(hyb["decon_mlp"], hyb[v], "worse") for v in close]
        out.append(("Hybrid MLP clearly behind the other hybrids", "45.8 (1.20×, Δlog 0.18)",
                    _combine([v for v, _ in vs]), "; ".join(f"vs {SHORT[v]} {n}" for v, (_, n) in zip(close, vs))))
    both = [v for v in cfg.variants if v in hyb and v in uni]
    if both:
        vs = [_verdict(hyb[v], uni[v], "better") for v in both]
        out.append(("Every hybrid beats its uniform version", "all six variants", _combine([v for v, _ in vs]),
                    "; ".join(f"{SHORT[v]} {n}" for v, (_, n) in zip(both, vs))))
    sk = [v for v in hyb if L(v, "hybrid", "skip:block")]
    if sk:
        vs = [_verdict(L(v, "hybrid", "skip:block"), hyb[v], "worse") for v in sk]
        ctrl = _verdict(L("standard", "uniform", "skip:block"), std, "worse")[1]
        out.append(("SKIP collapses every hybrid (whole blocks removed)", "2E+4 to 2E+6",
                    _combine([v for v, _ in vs]),
                    "; ".join(f"{SHORT[v]} {n}" for v, (_, n) in zip(sk, vs)) + f"; Standard-SKIP control {ctrl}"))
    if std and fixed:
        def gain(v: str) -> list[float]:
            a, b = L(v, "uniform", f"ctx:{lo}"), L(v, "uniform", f"ctx:{hi}")
            return [x - y for x, y in zip(a, b)]
        g = gain("standard")
        vs = [_verdict(gain(v), g, "better")[0] for v in fixed]  # expect the others' gain to be smaller
        out.append(("Standard gains most from longer context", "1.84× (128 → 2048) vs 1.26–1.31×", _combine(vs),
                    f"PPL ratio T={lo} → T={hi}: Standard ×{math.exp(statistics.fmean(g)):.3f}; "
                    + "; ".join(f"{SHORT[v]} ×{math.exp(statistics.fmean(gain(v))):.3f}" for v in fixed if gain(v))))
    return out


# ------------------------------------------------------------------------------------------------------ writing
def layout_table(cfg: Any, res: Any) -> list[str]:
    """Markdown lines of the nine-layout ablation (``layouts="all"``): per layout its Standard layers, then for each
    ablation variant Δ loss against uniform Standard and against the variant's main hybrid (layout ``even``), each
    with the seed-noise verdict; empty when the study has no ablation. The paper's figures for these layouts exist
    only as plots (Fig. 3), so the table gives no paper column."""
    if cfg.layouts != "all":
        return []
    from attnlab.models.stack import standard_layers

    n = cfg.base.model.n_layers
    variants = [v for v in ABLATION_VARIANTS if v in cfg.variants]
    std = _losses(res, "standard", "uniform")

    def cell(a: list[float], b: list[float]) -> str:
        if not a or not b:
            return "—"
        d = statistics.fmean(a) - statistics.fmean(b)
        v, se = significance(a, b)
        tag = "noise" if v == "no" else ("beyond noise" if not v.startswith("unknown") else "1 seed")
        return f"{d:+.3f} ({tag})"

    head = ["layout", f"Standard layers (n = {n})", "#Std"]
    for v in variants:
        head += [f"{SHORT[v]} loss", f"{SHORT[v]} Δ vs Standard", f"{SHORT[v]} Δ vs its hybrid"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lay in ["uniform", "hybrid", *ABLATION_LAYOUTS]:
        layers = [] if lay == "uniform" else standard_layers("even" if lay == "hybrid" else lay, n)
        cells = ["hybrid (even)" if lay == "hybrid" else lay, ", ".join(map(str, layers)) or "none", str(len(layers))]
        for v in variants:
            ls = _losses(res, v, lay)
            m, s = _ms(ls)
            cells += [_f(m) + (f" ± {s:.3f}" if s is not None else ""), cell(ls, std),
                      "—" if lay == "hybrid" else cell(ls, _losses(res, v, "hybrid"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _markdown(cfg: Any, res: Any, rows: list[dict[str, Any]], table: list[tuple[str, str, str, str]]) -> str:
    b = cfg.base
    m = b.model
    char = b.data.tokenizer == "char"
    tokens = b.steps * b.batch_size * m.context_len
    intro = (f"Study `{cfg.name}`: Xue, Moosavi and Aletras, \"Deconstructing Attention\" (arXiv:2510.11602v1), the "
             f"grid of spec 12.1 on `{b.data.source}` ({b.data.tokenizer} level). Every model: {m.n_layers} layers, "
             f"d_model {m.d_model}, {m.n_heads} heads, context {m.context_len}, {b.steps} steps x {b.batch_size} rows "
             f"= {tokens:,} training tokens, AdamW lr {b.optim.lr}, warmup {b.optim.warmup_steps}, cosine to "
             f"{b.optim.min_lr_ratio} x lr; seeds {', '.join(map(str, cfg.seeds))} (the same data order per seed for "
             f"every model). Validation loss in nats/token over the whole validation split; SKIP and context losses "
             f"over the first {cfg.eval_tokens or 'all'} validation tokens. Bigram reference (count-based, "
             f"{res.bigram.get('smoothing')}): {res.bigram['val_loss']:.4f} nats/token.")
    if res.bigram.get("vocab_size"):
        intro += f" Vocabulary: {res.bigram['vocab_size']:,} tokens"
        if getattr(cfg, "vocab_cap", None) is not None:
            intro += (f", capped at {cfg.vocab_cap:,} (the most frequent training words, `<eos>` and `<unk>`; "
                      "every other word reads as `<unk>`, so PPL is not comparable with uncapped WikiText-2 figures)")
        if res.bigram.get("val_unk_share") is not None:
            intro += f"; {res.bigram['val_unk_share']:.1%} of validation tokens are `<unk>`"
        intro += "."
    head = ["variant", "principles (spec 1.2)", "configuration", "params", "seeds (diverged)", "val loss (mean ± std)",
            "bpc" if char else "PPL", "Δ loss", "vs", "beyond seed noise", "tokens/s", "tok/s ÷ Standard", "wall (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        loss = _f(r["val_loss_mean"]) + (f" ± {r['val_loss_std']:.4f}" if r["val_loss_std"] is not None else "")
        lines.append("| " + " | ".join([
            f"`{r['variant']}`", r["principles"], r["config"], f"{r['params']:,}" if r["params"] else "—",
            f"{r['seeds']} ({r['diverged']})", loss, _f(r["val_bpc"] if char else r["val_ppl"], ".3f" if char else ".2f"),
            _f(r["delta"], "+.4f"), r["delta_vs"], r["beyond_noise"], _f(r["tokens_per_s"], ",.0f"),
            _f(r["tps_ratio_vs_standard"], ".2f"), _f(r["wall_s"], ".1f")]) + " |")
    t = ["| direction in the paper | paper figure | here | numbers |", "|---|---|---|---|"]
    t += [f"| {a} | {b_} | {c} | {d} |" for a, b_, c, d in table]
    lay = layout_table(cfg, res)
    if lay:
        t += ["", "## Nine-layout ablation (spec 4.2)", "",
              "Where the Standard layers go, for RndEmbQK and Non-approximate; the other layers hold the variant. Δ in "
              "nats/token, against uniform Standard and against the variant's main hybrid (Standard in the even "
              "layers). The paper (section 6, Fig. 3, values only as plots) finds the 50% and 25% layouts close to "
              "each other and the extreme ones (first, last, bilateral) failing on LAMBADA or in perplexity.", "",
              *lay]
    return ("# Deconstructing attention: study leaderboard\n\n" + "\n".join(_provenance()) + "\n\n" + intro + "\n\n"
            + "\n".join(lines) + "\n\n" + SIGNIFICANCE_RULE + " A diverged seed is counted in its row and left out "
            "of the mean.\n\n## Paper directions (spec 12.3)\n\nPaper figures: 500M parameters, WikiText PPL, Tbl. 1 "
            "and Tbl. 4 of arXiv:2510.11602v1; ratios and Δlog are the spec's arithmetic. Here: Δ is in nats/token, "
            "×k the PPL ratio; compare directions and ratios, not PPL points.\n\n" + "\n".join(t) + "\n")


def _plots(out: Path, cfg: Any, res: Any, rows: list[dict[str, Any]]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    files: dict[str, Path] = {}
    names = ["standard", *cfg.variants]
    configs = ["uniform", "hybrid", "hybrid SKIP (variant layers), block"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    w = 0.27
    for j, c in enumerate(configs):
        xs, ys, es = [], [], []
        for i, v in enumerate(names):
            r = next((r for r in rows if r["variant"] == v and r["config"] == c), None)
            if r is None and v == "standard" and c.startswith("hybrid SKIP"):
                r = next((r for r in rows if r["variant"] == v and r["config"].startswith("uniform Standard-SKIP")
                          and r["config"].endswith("block")), None)
            if r is None or r["val_loss_mean"] is None:
                continue
            m, s = r["val_loss_mean"], r["val_loss_std"] or 0.0
            xs.append(i + (j - 1) * w)
            ys.append(math.exp(m))
            es.append([[math.exp(m) - math.exp(m - s)], [math.exp(m + s) - math.exp(m)]])
        if xs:
            err = [[e[0][0] for e in es], [e[1][0] for e in es]]
            ax.bar(xs, ys, width=w, yerr=err, capsize=3, label=c if not c.startswith("hybrid SKIP") else
                   "SKIP (hybrid minus variant layers; Standard: odd layers removed)")
    ax.axhline(math.exp(res.bigram["val_loss"]), color="k", ls="--", lw=1, label="bigram reference")
    ax.set_xticks(range(len(names)), [SHORT[v] for v in names])
    ax.set_yscale("log")
    ax.set(title="validation PPL per variant and configuration (mean ± std over seeds)", ylabel="PPL (log scale)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    files["ppl"] = out / "ppl_by_variant.png"
    fig.savefig(files["ppl"], dpi=110)
    plt.close(fig)

    trained = [r for r in rows if r["delta"] is not None and r["delta_vs"] == "standard"
               and (r["variant"], r["config"]) != ("standard", "uniform")]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(trained)), 4.5))
    labels = [f"{SHORT[r['variant']]} {r['config']}" for r in trained]
    ax.errorbar(range(len(trained)), [r["delta"] for r in trained],
                yerr=[2 * r["welch_se"] if r["welch_se"] is not None else 0 for r in trained], fmt="o", capsize=3)
    ax.axhline(0, color="k", lw=1)
    ax.set_xticks(range(len(trained)), labels, rotation=40, ha="right", fontsize=8)
    ax.set(title="Δ validation loss vs Standard\n(bars: 2 x Welch SE, the seed-noise threshold)", ylabel="nats/token")
    ax.set_yscale("symlog", linthresh=0.05)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    files["delta"] = out / "delta_vs_standard.png"
    fig.savefig(files["delta"], dpi=110)
    plt.close(fig)

    ctxs = cfg.eval_contexts()
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for i, (v, lay) in enumerate((v, lay) for v, lay in cfg.models() if lay in ("uniform", "hybrid")):
        ys = [_ms(_losses(res, v, lay, f"ctx:{c}"))[0] for c in ctxs]
        if all(y is not None for y in ys):
            ax.plot(ctxs, [math.exp(y) for y in ys], marker="o", ls="-" if lay == "uniform" else "--",
                    color=f"C{names.index(v)}", label=f"{SHORT[v]} {lay}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(title="validation PPL against evaluation context (Tbl. 4 analogue)", xlabel="context (tokens)",
           ylabel="PPL")
    ax.yaxis.set_major_formatter(ticker.ScalarFormatter())  # plain PPL numbers, not 1.6 x 10^2
    ax.yaxis.set_minor_formatter(ticker.ScalarFormatter())
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, never over the curves
    ax.grid(alpha=0.3)
    fig.tight_layout()
    files["context"] = out / "ppl_vs_context.png"
    fig.savefig(files["context"], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, v in zip(axes, ("decon_nonapprox", "decon_rndembqk")):
        for lay, ls in (("uniform", "-"), ("hybrid", "--")):
            per = [r["eval"]["max_logit"] for (vv, ll, _), r in sorted(res.runs.items()) if (vv, ll) == (v, lay)
                   and "eval" in r]
            if not per:
                continue
            n = len(per[0])
            ys = [max((p[i] for p in per if p[i] is not None), default=float("nan")) for i in range(n)]
            ax.plot(range(1, n + 1), ys, marker="o", ls=ls, label=f"{lay} (max over seeds)")
        ax.set(title=f"{SHORT[v]}: largest |pre-softmax logit| per layer", xlabel="layer (from 1)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not in this study", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel("|logit|")
    fig.tight_layout()
    files["logits"] = out / "max_logit_per_layer.png"
    fig.savefig(files["logits"], dpi=110)
    plt.close(fig)

    if cfg.layouts == "all":
        from attnlab.models.stack import standard_layers

        lays = ["uniform", "hybrid", *ABLATION_LAYOUTS]
        n = cfg.base.model.n_layers
        std = _losses(res, "standard", "uniform")
        ref = statistics.fmean(std) if std else None
        fig, ax = plt.subplots(figsize=(10, 4.5))
        if ref is not None:
            sd = _ms(std)[1] or 0.0
            ax.axhspan(-sd, sd, color="0.85", label="uniform Standard ± std")
            ax.axhline(0.0, color="k", lw=0.8)
        base = ref if ref is not None else 0.0
        for k, v in enumerate(v for v in ABLATION_VARIANTS if v in cfg.variants):
            ms = [_ms(_losses(res, v, lay)) for lay in lays]
            ax.errorbar([i + 0.12 * (k - 0.5) for i in range(len(lays))],
                        [m - base if m is not None else float("nan") for m, _ in ms], fmt="o", capsize=3,
                        label=SHORT[v], yerr=[(s or 0.0) if m is not None else 0.0 for m, s in ms])
        ticks = ["uniform\n(0 Std)", f"hybrid (even)\n({len(standard_layers('even', n))} Std)"]
        ticks += [f"{lay}\n({len(standard_layers(lay, n))} Std)" for lay in ABLATION_LAYOUTS]
        ax.set_xticks(range(len(lays)), ticks, fontsize=8)
        ax.set(title=f"nine-layout ablation (spec 4.2), {n} layers\nvalidation loss minus uniform Standard's "
               "(mean ± std over seeds)", ylabel="Δ loss (nats/token)" if ref is not None else "loss (nats/token)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        files["layouts"] = out / "layouts.png"
        fig.savefig(files["layouts"], dpi=110)
        plt.close(fig)
    return files


def _html(md: str, pngs: dict[str, Path]) -> str:
    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        return f'<a href="{p.name}"><img alt="{p.stem}" src="data:image/png;base64,{data}" style="max-width:100%"></a>'

    body: list[str] = []
    table: list[str] = []

    def flush() -> None:
        if table:
            head = [c.strip() for c in table[0].strip("|").split("|")]
            t = "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"
            for line in table[2:]:
                t += "<tr>" + "".join(f"<td>{html.escape(c.strip().strip('`'))}</td>"
                                      for c in line.strip("|").split("|")) + "</tr>"
            body.append(t + "</tbody></table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    titles = {"ppl": "PPL per variant and configuration", "delta": "Δ loss against Standard",
              "context": "PPL against evaluation context", "logits": "Largest pre-softmax logit per layer",
              "layouts": "Nine-layout ablation"}
    plots = "".join(f"<h2>{titles[k]}</h2>{img(p)}" for k, p in pngs.items())
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "th{background:#f3f3f3}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>attnlab study: deconstructing attention</title>"
            f"<style>{style}</style></head><body>{''.join(body)}{plots}<p>Files: <a href='leaderboard.md'>"
            "leaderboard.md</a>, <a href='leaderboard.csv'>leaderboard.csv</a>, per-run results under <code>"
            "runs/&lt;variant&gt;/&lt;layout&gt;/seed&lt;k&gt;/</code>.</p></body></html>\n")


def write_study_report(out: Path, cfg: Any, res: Any) -> dict[str, Path]:
    """Write leaderboard.md/.csv, table_12_3.md, the plots and report.html into ``out``."""
    rows = model_rows(cfg, res)
    table = direction_table(cfg, res)
    md = _markdown(cfg, res, rows, table)
    files = {"leaderboard_md": out / "leaderboard.md", "leaderboard_csv": out / "leaderboard.csv",
             "table_12_3": out / "table_12_3.md"}
    files["leaderboard_md"].write_text(md)
    with open(files["leaderboard_csv"], "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    files["table_12_3"].write_text(md[md.index("## Paper directions"):])
    pngs = _plots(out, cfg, res, rows)
    files.update(pngs)
    files["html"] = out / "report.html"
    files["html"].write_text(_html(md, pngs))
    return files
