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
import functools
import re
import html
import math
import statistics
from pathlib import Path
from typing import Any

from attnlab.compare.curves import far_off as _far_off  # (its old home; the tests import it from here)
from attnlab.compare.curves import loss_curves_figure
from attnlab.train.metrics import read_jsonl

RunKey = tuple[str, int]

__all__ = ["leaderboard_rows", "write_report", "significance", "welch_p", "SIGNIFICANCE_RULE", "markdown_inline"]

SIGNIFICANCE_RULE = (
    "A difference from the baseline counts as beyond seed noise when |mean - mean_baseline| > "
    "2 * sqrt(s^2/n + s_baseline^2/n_baseline) (Welch standard error; s = sample std over seeds). "
    "Needs at least 2 seeds per variant."
)


def _mean_std(xs: list[float]) -> tuple[float, float | None]:
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) if len(xs) >= 2 else None)


def welch_p(a: list[float], b: list[float]) -> float | None:
    """The two-sided p-value of Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``) of ``a`` against ``b``;
    ``None`` with fewer than 2 values on a side, 1.0 when both are constant and equal."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.variance(a) == 0 and statistics.variance(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


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
            "welch_p": welch_p(prim, base) if var != cfg.baseline else None,
            "tokens_per_s": statistics.fmean(r["tokens_per_s"] for r in rs),
            # CPU: the process RSS cannot be attributed to one of several runs sharing a process (it read 0.0 MiB
            # for runs after the first); only CUDA's allocator peak is reported
            "peak_mem_mib": (statistics.fmean(r["peak_memory_bytes"] for r in rs) / 2**20
                             if rs[0].get("memory_kind") == "cuda-allocated" else None),
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
    from attnlab import __version__

    return [f"- command: `{command}`",
            f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
            f"- attnlab: {__version__}" + (f", git commit {_git_commit()}" if _git_commit() else ""),
            f"- machine: {machine}"]


@functools.lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit of the attnlab source tree when it is a git checkout (with ``+dirty`` for local changes)."""
    import subprocess

    src = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=src, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


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
    head += [f"Δ {metric} vs baseline", "beyond seed noise", "Welch p", "tokens/s", "peak mem (MiB)", "wall (s)"]
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
        cells += [f"{r['delta_vs_baseline']:+.4f}", r["beyond_noise"], _fmt(r["welch_p"], ".3g"), f"{r['tokens_per_s']:,.0f}",
                  _fmt(r["peak_mem_mib"], ".1f"), f"{r['wall_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    intro = cfg.describe(rows[0]["tokens"])
    mem = rows[0]["memory_kind"]
    notes = [
        "",
        SIGNIFICANCE_RULE + " Welch p: the two-sided p-value of Welch's t-test on the same values (scipy); with 2-3 "
        "seeds it has 1-4 degrees of freedom, so read it as a rough guide.",
        "",
        "Peak memory: " + ("CUDA max_memory_allocated." if mem == "cuda-allocated" else
                           "not reported on CPU: the runs of a comparison share one process, whose resident set "
                           "cannot be attributed to one run (later runs reuse memory the first one took and read "
                           "0 MiB); `attnlab bench mechanisms` measures each layer's live tensor memory per step."),
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


def _curves(out: Path, cfg: Any) -> dict[str, list[tuple[list[float], list[float], list[float], list[float],
                                                            list[float]]]]:
    """Per mechanism, per seed: (train tokens, train loss, eval tokens, eval loss, eval wall-clock seconds)."""
    curves: dict[str, list] = {}
    for mech in cfg.variants:
        for s in cfg.seeds:
            recs = read_jsonl(cfg.run_dir(out, mech, s) / "metrics.jsonl")
            tr = [r for r in recs if r["kind"] == "train"]
            ev = [r for r in recs if r["kind"] == "eval" and r.get("split") == "val"]
            curves.setdefault(mech, []).append(
                ([r["tokens"] for r in tr], [r["loss"] for r in tr], [r["tokens"] for r in ev], [r["loss"] for r in ev],
                 [r.get("elapsed_s", float("nan")) for r in ev])
            )
    return curves


def _plots(out: Path, cfg: Any, rows: list[dict[str, Any]], runs: dict[RunKey, dict[str, Any]]
           ) -> tuple[dict[str, Path], dict[str, str]]:
    """The report's figures (PNG paths by name) and their captions (by the same names; only where there is one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = cfg.task_class.loss_label
    names = [r["mechanism"] for r in rows]
    off = dict(zip(names, _far_off([r["val_loss_mean"] for r in rows])))
    fig, caption = loss_curves_figure(_curves(out, cfg), ylabel=label, plt=plt)
    curves_png = _save(fig, out / "loss_curves.png", plt, rect=(0, 0.03 if caption else 0, 1, 0.97))

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(rows)), 4))
    means = [r["val_loss_mean"] for r in rows]
    errs = [r["val_loss_std"] or 0.0 for r in rows]
    shown = [m if not off[n] else float("nan") for n, m in zip(names, means)]
    ax.bar(names, [0 if m != m else m for m in shown], yerr=[0 if off[n] else e for n, e in zip(names, errs)],
           capsize=4, color=[f"C{i}" for i in range(len(rows))])
    keep = [(m, e) for n, m, e in zip(names, means, errs) if not off[n]] or list(zip(means, errs))
    lo = min(m - e for m, e in keep)
    hi = max(m + e for m, e in keep)
    pad = max(0.02, 0.15 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    for i, (n, m) in enumerate(zip(names, means)):
        if off[n]:  # written in its place, off the scale of the others
            ax.annotate(f"{m:.4f}\n(off scale)", (i, hi + pad * 0.5), ha="center", va="top", fontsize=8, color="C3")
    ax.set(title="final validation loss (mean ± std over seeds)", ylabel=label)
    ax.grid(axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), rotation=20, ha="right")
    final_png = _save(fig, out / "final_loss.png", plt)

    has_mem = all(r["peak_mem_mib"] is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if has_mem else 1, figsize=(max(8 if has_mem else 5, (2.2 if has_mem else 1.2)
                                                                     * len(rows)), 4), squeeze=False)
    colors = [f"C{i}" for i in range(len(rows))]
    b1 = axes[0][0]
    b1.bar(names, [r["tokens_per_s"] for r in rows], color=colors)
    b1.set(title="training throughput", ylabel="tokens/s (mean over seeds)")
    if has_mem:
        axes[0][1].bar(names, [r["peak_mem_mib"] for r in rows], color=colors)
        axes[0][1].set(title="peak memory", ylabel="MiB (CUDA max_memory_allocated)")
    for b in axes[0]:
        b.grid(axis="y", alpha=0.3)
        plt.setp(b.get_xticklabels(), rotation=20, ha="right")
    cost_png = _save(fig, out / "cost.png", plt)
    pngs = {"loss_curves": curves_png, "final_loss": final_png, "cost": cost_png}
    horizon = _horizon_plot(out, cfg, runs, plt)
    if horizon is not None:
        pngs["horizon_error"] = horizon
    return pngs, ({"loss_curves": caption} if caption else {})


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


def _save(fig: Any, path: Path, plt: Any, rect: tuple[float, float, float, float] | None = None) -> Path:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_inline(text: str) -> str:
    """HTML of one line of the report's Markdown: escaped, with `code`, **bold** and [text](link) rendered. Written
    here because the reports use only these three inline forms (a Markdown library would be a dependency for them)."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    # (the URL's &, < and > are already escaped with the line; only its quotes are left to escape)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", lambda m: f'<a href="{m.group(2).replace(chr(34), "&quot;")}">'
                  f'{m.group(1)}</a>', out)


def _run_links(out: Path, cfg: Any) -> str:
    """A table of every run with links to its directory, checkpoints and TensorBoard logs (relative to ``out``)."""
    rows = []
    for var in cfg.variants:
        for s in cfg.seeds:
            d = cfg.run_dir(out, var, s)
            rel = d.relative_to(out).as_posix()
            ckpts = sorted(p.name for p in d.glob("ckpt-*") if p.is_dir())
            tb = d / "tensorboard"
            links = [f'<a href="{rel}/">run</a>', f'<a href="{rel}/metrics.csv">metrics</a>']
            if ckpts:
                links.append(f'<a href="{rel}/{ckpts[-1]}/">checkpoint {ckpts[-1][5:].lstrip("0") or "0"}</a>')
            links.append(f'<a href="{rel}/tensorboard/">TensorBoard</a> (<code>tensorboard --logdir {html.escape(str(tb))}</code>)'
                         if tb.is_dir() else "no TensorBoard log")
            rows.append(f"<tr><td>{html.escape(var)}</td><td>{s}</td><td>{' · '.join(links)}</td></tr>")
    return ("<table><thead><tr><th>" + html.escape(cfg.variant_label) + "</th><th>seed</th><th>files</th></tr>"
            "</thead><tbody>" + "".join(rows) + "</tbody></table>")


def _html(out: Path, cfg: Any, md: str, rows: list[dict[str, Any]], pngs: dict[str, Path],
          captions: dict[str, str] | None = None) -> str:
    def img(p: Path) -> str:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        return f'<a href="{p.name}"><img alt="{p.stem}" src="data:image/png;base64,{data}" style="max-width:100%"></a>'

    table_lines = [l for l in md.splitlines() if l.startswith("|")]
    head = [c.strip() for c in table_lines[0].strip("|").split("|")]
    body = [[c.strip() for c in l.strip("|").split("|")] for l in table_lines[2:]]
    t = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in body:
        t.append("<tr>" + "".join(f"<td>{markdown_inline(c)}</td>" for c in r) + "</tr>")
    t.append("</tbody></table>")
    prov, paras = [], []
    for line in md.splitlines():
        if not line or line.startswith("|") or line.startswith("#"):
            continue
        (prov if line.startswith("- ") else paras).append(line)
    provenance = "<ul>" + "".join(f"<li>{markdown_inline(l[2:])}</li>" for l in prov) + "</ul>"
    text = "".join(f"<p>{markdown_inline(p)}</p>" for p in paras)
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:14px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
             "code{background:#f5f5f5;padding:0 3px}")
    sections = [("Loss curves", "loss_curves"), ("Final validation loss", "final_loss"),
                ("Throughput (and peak memory on CUDA)", "cost"), ("Error by horizon step", "horizon_error")]
    captions = captions or {}
    figures = "".join(f"<h2>{title}</h2>{img(pngs[key])}"
                      + (f"<p class='caption'>{html.escape(captions[key])}</p>" if key in captions else "")
                      for title, key in sections if key in pngs)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>attnlab comparison</title>"
        f"<style>{style}</style></head><body><h1>attnlab comparison</h1>{provenance}{''.join(t)}{text}{figures}"
        f"<h2>Runs</h2>{_run_links(out, cfg)}"
        "<p>Files: <a href='leaderboard.md'>leaderboard.md</a>, <a href='leaderboard.csv'>leaderboard.csv</a>.</p>"
        "</body></html>\n"
    )


def write_report(out: Path, cfg: Any, runs: dict[tuple[str, int], dict[str, Any]]) -> dict[str, Path]:
    """Write leaderboard.md/.csv, loss_curves.png (mean ± std over seeds against tokens and wall-clock, zoomed on
    the bulk with a far-off variant in a full-range row: :mod:`attnlab.compare.curves`), final_loss.png (a far-off
    variant shown apart), cost.png (throughput and peak memory; forecasting also horizon_error.png) and report.html
    (provenance, the table with notes rendered, every figure with its caption, links to each run's files) into
    ``out``."""
    rows = leaderboard_rows(cfg, runs)
    md = _markdown(cfg, rows)
    files = {"leaderboard_md": out / "leaderboard.md", "leaderboard_csv": out / "leaderboard.csv"}
    files["leaderboard_md"].write_text(md)
    _write_csv(files["leaderboard_csv"], rows)
    pngs, captions = _plots(out, cfg, rows, runs)
    files.update(pngs)
    files["html"] = out / "report.html"
    files["html"].write_text(_html(out, cfg, md, rows, pngs, captions))
    return files
