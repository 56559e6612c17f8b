"""Leaderboard (Markdown + CSV), loss-curve plots (PNG) and a one-page HTML report of a comparison.

Significance rule (stated in every leaderboard): a mechanism's mean validation loss differs from the baseline's
beyond seed noise when ``|mean - mean_base| > 2 * sqrt(s^2/n + s_base^2/n_base)``, the Welch standard error of
the difference of means (``s`` the sample standard deviation over seeds). This is roughly a two-sided test at
the 5% level for many seeds and lenient for few (the t quantile for 1-2 degrees of freedom is 4.3-12.7, not 2);
with fewer than 2 seeds on either side the noise is unknown and the column says so.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import statistics
from pathlib import Path
from typing import Any

from attnlab.train.metrics import read_jsonl

RunKey = tuple[str, int]

__all__ = ["leaderboard_rows", "write_report", "significance", "SIGNIFICANCE_RULE"]

SIGNIFICANCE_RULE = (
    "A difference from the baseline counts as beyond seed noise when |mean - mean_baseline| > "
    "2 * sqrt(s^2/n + s_baseline^2/n_baseline) (Welch standard error; s = sample std over seeds). "
    "Needs at least 2 seeds per variant."
)


def _mean_std(xs: list[float]) -> tuple[float, float | None]:
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) if len(xs) >= 2 else None)


def significance(a: list[float], b: list[float], *, lower_is_better: bool = True) -> tuple[str, float | None]:
    """(verdict, Welch standard error) for samples ``a`` (a variant) vs ``b`` (the baseline) of a metric where
    lower is better (a loss; ``lower_is_better=False`` for BLEU)."""
    if len(a) < 2 or len(b) < 2:
        return "unknown (needs >= 2 seeds)", None
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    diff = statistics.fmean(a) - statistics.fmean(b)
    if se == 0.0:
        return ("yes" if diff != 0 else "no"), se
    if abs(diff) > 2 * se:
        return ("yes: better" if (diff < 0) == lower_is_better else "yes: worse"), se
    return "no", se


def _metric(run: dict[str, Any], name: str, split: str = "val") -> float | None:
    r = run.get(split)
    if not r:
        return None
    return r["loss"] if name == "loss" else r.get("metrics", {}).get(name)


def leaderboard_rows(cfg: Any, runs: dict[RunKey, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant (mechanism, cross score, ...), in the order of ``cfg.variants``.

    The verdict compares the task's primary metric (validation loss for language modelling, BLEU for
    translation) with the baseline's; ``delta_vs_baseline`` is that metric's difference of means."""
    metric, direction = cfg.primary_metric
    nll = cfg.task_class.loss_is_nll  # a perplexity only for a negative log-likelihood
    base = [_metric(runs[(cfg.baseline, s)], metric) for s in cfg.seeds]
    rows = []
    for var in cfg.variants:
        rs = [runs[(var, s)] for s in cfg.seeds]
        losses = [r["val"]["loss"] for r in rs]
        mean, std = _mean_std(losses)
        prim = [_metric(r, metric) for r in rs]
        pm, ps = _mean_std(prim)  # type: ignore[arg-type]
        bpc = [r["val"].get("bits_per_char") for r in rs]
        test = [r["test"]["loss"] for r in rs if r.get("test")]
        verdict, se = significance(prim, base, lower_is_better=direction == "min") if var != cfg.baseline \
            else ("baseline", None)
        row = {
            "mechanism": var,
            "params": rs[0]["n_params"],
            "seeds": len(rs),
            "val_loss_mean": mean,
            "val_loss_std": std,
            "val_ppl": math.exp(mean) if nll else None,
            "val_bpc": statistics.fmean(bpc) if all(b is not None for b in bpc) else None,
            "test_loss_mean": statistics.fmean(test) if test else None,
            "test_ppl": math.exp(statistics.fmean(test)) if test and nll else None,
        }
        if metric != "loss":
            test_m = [_metric(r, metric, "test") for r in rs if r.get("test")]
            row.update({f"val_{metric}_mean": pm, f"val_{metric}_std": ps,
                        f"test_{metric}_mean": statistics.fmean(test_m) if test_m and None not in test_m else None})
        row.update({
            "delta_vs_baseline": pm - statistics.fmean(base),  # type: ignore[arg-type]
            "welch_se": se,
            "beyond_noise": verdict,
            "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in rs),
            "peak_mem_mib": statistics.fmean(r["peak_memory_bytes"] for r in rs) / 2**20,
            "memory_kind": rs[0].get("memory_kind", ""),
            "wall_s": statistics.fmean(r["wall_s"] for r in rs),
            "overhead_fraction": statistics.fmean(r["overhead_fraction"] for r in rs),
            "tokens": rs[0]["tokens"],
        })
        rows.append(row)
    return rows


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def _provenance() -> list[str]:
    """How and where the report was produced: the command line, the date and the machine."""
    import datetime as dt
    import os
    import platform
    import sys

    import torch

    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    # ``attnlab ...``, ``python -m attnlab.cli ...`` (argv[0] is cli.py) and ``python -m attnlab`` all read as attnlab
    command = " ".join(["attnlab" if prog in ("attnlab", "cli.py", "__main__.py") else prog, *sys.argv[1:]])
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.lower().startswith("model name")), cpu)
    except OSError:
        pass
    machine = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        machine += f", GPU {torch.cuda.get_device_name()}"
    if hasattr(os, "getloadavg"):
        machine += ", load average at the end " + " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return [f"- command: `{command}`",
            f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
            f"- machine: {machine}"]


def _markdown(cfg: Any, rows: list[dict[str, Any]]) -> str:
    char = all(r["val_bpc"] is not None for r in rows)
    nll = cfg.task_class.loss_is_nll
    has_test = nll and any(r["test_loss_mean"] is not None for r in rows)
    metric = cfg.primary_metric[0]
    head = [cfg.variant_label, "params", "val loss (mean ± std)"] + (["bpc" if char else "val ppl"] if nll else [])
    if has_test:
        head += ["test ppl"]
    if metric != "loss":
        head += [f"val {metric} (mean ± std)", f"test {metric}"]
    head += [f"Δ {metric} vs baseline", "beyond seed noise", "tokens/s", "peak mem (MiB)", "wall (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        loss = f"{r['val_loss_mean']:.4f}" + (f" ± {r['val_loss_std']:.4f}" if r["val_loss_std"] is not None else "")
        cells = [f"`{r['mechanism']}`", f"{r['params']:,}", loss]
        if nll:
            cells.append(_fmt(r["val_bpc"]) if char else _fmt(r["val_ppl"], ".2f"))
        if has_test:
            cells.append(_fmt(r["test_ppl"], ".2f"))
        if metric != "loss":
            std, spec = r[f"val_{metric}_std"], cfg.task_class.metric_format
            cells += [format(r[f"val_{metric}_mean"], spec) + (f" ± {std:{spec}}" if std is not None else ""),
                      _fmt(r[f"test_{metric}_mean"], spec)]
        cells += [f"{r['delta_vs_baseline']:+.4f}", r["beyond_noise"], f"{r['tokens_per_s']:,.0f}",
                  f"{r['peak_mem_mib']:.1f}", f"{r['wall_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    intro = cfg.describe(rows[0]["tokens"])
    mem = rows[0]["memory_kind"]
    notes = [
        "",
        SIGNIFICANCE_RULE,
        "",
        "Peak memory: " + ("CUDA max_memory_allocated." if mem == "cuda-allocated" else
                           "sampled increase of the process resident set during the run (CPU); runs share one "
                           "process, so the first run also pays the allocator's warm-up and later runs reuse "
                           "memory already held: compare CPU figures with care."),
        "tokens/s: training tokens over training time (evaluation and checkpoints excluded).",
    ]
    return ("# Leaderboard\n\n" + "\n".join(_provenance()) + "\n\n" + intro + "\n\n" + "\n".join(lines) + "\n"
            + "\n".join(notes) + "\n")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _curves(out: Path, cfg: Any) -> dict[str, list[tuple[list[float], list[float], list[float], list[float]]]]:
    """Per mechanism, per seed: (train tokens, train loss, eval tokens, eval loss)."""
    curves: dict[str, list] = {}
    for mech in cfg.variants:
        for s in cfg.seeds:
            recs = read_jsonl(cfg.run_dir(out, mech, s) / "metrics.jsonl")
            tr = [r for r in recs if r["kind"] == "train"]
            ev = [r for r in recs if r["kind"] == "eval" and r.get("split") == "val"]
            curves.setdefault(mech, []).append(
                ([r["tokens"] for r in tr], [r["loss"] for r in tr], [r["tokens"] for r in ev], [r["loss"] for r in ev])
            )
    return curves


def _ema(xs: list[float], alpha: float = 0.1) -> list[float]:
    out, m = [], None
    for x in xs:
        m = x if m is None else (1 - alpha) * m + alpha * x
        out.append(m)
    return out


def _plots(out: Path, cfg: Any, rows: list[dict[str, Any]], runs: dict[RunKey, dict[str, Any]]) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = _curves(out, cfg)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (mech, seeds) in enumerate(curves.items()):
        color = f"C{i}"
        for j, (tt, tl, et, el) in enumerate(seeds):
            label = mech if j == 0 else None
            ax1.plot(tt, _ema(tl), color=color, lw=1.2, alpha=0.9 if j == 0 else 0.5, label=label)
            ax2.plot(et, el, color=color, marker="o", ms=3, lw=1.2, alpha=0.9 if j == 0 else 0.5, label=label)
    label = cfg.task_class.loss_label
    ax1.set(title="training loss (EMA 0.1)", xlabel="tokens", ylabel=label)
    ax2.set(title="validation loss (whole split)", xlabel="tokens", ylabel=label)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    curves_png = _save(fig, out / "loss_curves.png", plt)

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 4))
    names = [r["mechanism"] for r in rows]
    means = [r["val_loss_mean"] for r in rows]
    errs = [r["val_loss_std"] or 0.0 for r in rows]
    ax.bar(names, means, yerr=errs, capsize=4, color=[f"C{i}" for i in range(len(rows))])
    lo = min(m - e for m, e in zip(means, errs))
    hi = max(m + e for m, e in zip(means, errs))
    pad = max(0.02, 0.15 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    ax.set(title="final validation loss (mean ± std over seeds)", ylabel=label)
    ax.grid(axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    final_png = _save(fig, out / "final_loss.png", plt)
    pngs = {"loss_curves": curves_png, "final_loss": final_png}
    horizon = _horizon_plot(out, cfg, runs, plt)
    if horizon is not None:
        pngs["horizon_error"] = horizon
    return pngs


def _horizon_plot(out: Path, cfg: Any, runs: dict[RunKey, dict[str, Any]], plt: Any) -> Path | None:
    """Error by horizon step (forecasting: each run's ``mse_per_step`` of the test split, else of validation), the
    mean over seeds per variant with the seeds' range shaded; ``None`` when the runs have no per-step errors."""
    split = "test" if all((runs[(v, s)].get("test") or {}).get("mse_per_step") for v in cfg.variants
                          for s in cfg.seeds) else "val"
    per = {v: [runs[(v, s)].get(split, {}).get("mse_per_step") for s in cfg.seeds] for v in cfg.variants}
    if not all(x for xs in per.values() for x in xs):
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (var, xs) in enumerate(per.items()):
        steps = range(1, len(xs[0]) + 1)
        ax.plot(steps, [statistics.fmean(c) for c in zip(*xs)], color=f"C{i}", lw=1.4, label=var)
        if len(xs) > 1:
            ax.fill_between(steps, [min(c) for c in zip(*xs)], [max(c) for c in zip(*xs)], color=f"C{i}", alpha=0.15)
    ax.set(title=f"{split} error by horizon step (mean over seeds, range shaded)", xlabel="horizon step",
           ylabel=cfg.task_class.loss_label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "horizon_error.png", plt)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _html(cfg: Any, md: str, rows: list[dict[str, Any]], pngs: dict[str, Path]) -> str:
    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        return f'<a href="{p.name}"><img alt="{p.stem}" src="data:image/png;base64,{data}" style="max-width:100%"></a>'

    table_lines = [l for l in md.splitlines() if l.startswith("|")]
    head = [c.strip() for c in table_lines[0].strip("|").split("|")]
    body = [[c.strip().strip("`") for c in l.strip("|").split("|")] for l in table_lines[2:]]
    t = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in body:
        t.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    t.append("</tbody></table>")
    paras = [l for l in md.splitlines() if l and not l.startswith("|") and not l.startswith("#")]
    text = "".join(f"<p>{html.escape(p)}</p>" for p in paras)
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>attnlab comparison</title>"
        f"<style>{style}</style></head><body><h1>attnlab comparison</h1>{''.join(t)}{text}"
        f"<h2>Loss curves</h2>{img(pngs['loss_curves'])}<h2>Final validation loss</h2>{img(pngs['final_loss'])}"
        + (f"<h2>Error by horizon step</h2>{img(pngs['horizon_error'])}" if "horizon_error" in pngs else "")
        + "<p>Files: <a href='leaderboard.md'>leaderboard.md</a>, <a href='leaderboard.csv'>leaderboard.csv</a>, "
        "per-run metrics under <code>runs/&lt;mechanism&gt;/seed&lt;k&gt;/</code>.</p></body></html>\n"
    )


def write_report(out: Path, cfg: Any, runs: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Path]:
    """Write leaderboard.md/.csv, loss_curves.png, final_loss.png (forecasting: horizon_error.png) and report.html
    into ``out``."""
    rows = leaderboard_rows(cfg, runs)
    md = _markdown(cfg, rows)
    files = {"leaderboard_md": out / "leaderboard.md", "leaderboard_csv": out / "leaderboard.csv"}
    files["leaderboard_md"].write_text(md)
    _write_csv(files["leaderboard_csv"], rows)
    pngs = _plots(out, cfg, rows, runs)
    files.update(pngs)
    files["html"] = out / "report.html"
    files["html"].write_text(_html(cfg, md, rows, pngs))
    return files
