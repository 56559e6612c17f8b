"""``attnlab vlm digits``: the future-aware masks on a real, small multimodal task (spec future_mask.md E4, made
concrete as issue 9 asks).

Task :mod:`attnlab.tasks.digits_vqa`: two scikit-learn 8x8 digit images become visual tokens (a patch embedding in
front of attnlab's LM) followed by a question (same digit? which is larger? their sum); one answer token. One
comparison (:func:`attnlab.compare.run_compare`) trains a model under each mask (``options.train_mask`` in ``c``,
``f``, ``v2v``, ``v2t``) with every seed; every trained model is scored under every mask. The report is the matrix
*training mask x evaluation mask* of test accuracy, mean ± std over seeds, each cell tested against the causal
model evaluated causally (the first cell) with the comparison's rule (:data:`attnlab.compare.report.
SIGNIFICANCE_RULE`). Its first row is the paper's protocol (a causally trained model, the mask switched on at
inference only); its diagonal is "trained with the mask".

Output directory: the comparison's (``compare.json``, ``runs/<mask>/seed<k>/``, ``leaderboard.*``, plots) plus
``masks.md``, ``masks.csv`` and ``masks.png``. Resumable: the same command keeps finished runs.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from attnlab.compare.config import CompareConfig
from attnlab.compare.report import SIGNIFICANCE_RULE, significance
from attnlab.masks.vlm import FUTURE_KINDS

__all__ = ["digits_compare", "mask_matrix", "write_mask_report", "run_digits"]

MASK_NAMES = {"c": "causal M^c", "f": "M^f", "v2v": "M^v2v", "v2t": "M^v2t"}


def digits_compare(preset: str = "full", *, seeds: list[int] | None = None) -> CompareConfig:
    """The comparison of a preset (``full``: :func:`attnlab.compare.presets.digits_masks`, three seeds; ``quick``:
    ``digits_masks_quick``, two), with other ``seeds`` if given."""
    from attnlab.compare.presets import digits_masks, digits_masks_quick

    presets = {"full": digits_masks, "quick": digits_masks_quick}
    if preset not in presets:
        raise ValueError(f"preset must be one of {', '.join(presets)}, got {preset!r}")
    cfg = presets[preset]()
    return cfg if seeds is None else replace(cfg, seeds=list(seeds))


def _acc(run: dict[str, Any], split: str, mask: str) -> float:
    return float(run[split]["metrics"][f"acc_{mask}"])


def mask_matrix(cfg: CompareConfig, runs: dict[tuple[str, int], dict[str, Any]], *,
                split: str = "test") -> list[dict[str, Any]]:
    """One row per (training mask, evaluation mask): the accuracies of the seeds, their mean and std, and the
    difference from the causal model evaluated causally with its seed-noise verdict."""
    base = [_acc(runs[("c", s)], split, "c") for s in cfg.seeds]
    rows = []
    for train in cfg.variants:
        for ev in FUTURE_KINDS:
            xs = [_acc(runs[(train, s)], split, ev) for s in cfg.seeds]
            verdict, _ = significance(xs, base, lower_is_better=False)
            rows.append({"train_mask": train, "eval_mask": ev, "accs": xs, "mean": statistics.fmean(xs),
                         "std": statistics.stdev(xs) if len(xs) > 1 else None,
                         "delta": statistics.fmean(xs) - statistics.fmean(base),
                         "beyond_noise": "baseline" if (train, ev) == ("c", "c") else verdict})
    return rows


def _cell(r: dict[str, Any]) -> str:
    s = f"{r['mean']:.2f}" + (f" ± {r['std']:.2f}" if r["std"] is not None else "")
    return s


def write_mask_report(out: str | Path, cfg: CompareConfig, runs: dict[tuple[str, int], dict[str, Any]]) -> list[Path]:
    """``masks.md`` (the matrix, the per-kind accuracies and every cell's verdict), ``masks.csv`` and ``masks.png``
    in ``out``; returns their paths."""
    from attnlab.compare.report import _provenance

    out = Path(out)
    rows = mask_matrix(cfg, runs)
    by = {(r["train_mask"], r["eval_mask"]): r for r in rows}
    n = len(cfg.seeds)
    b = cfg.base
    lm = b.model.lm
    lines = [
        "# Future-aware masks on two-image digit questions (spec future_mask.md E4)", "",
        *_provenance(), "",
        f"Task: two scikit-learn 8x8 digits as {2 * b.model.patches_per_image} visual tokens "
        f"({b.model.patch_size}x{b.model.patch_size} patches), then a question (same digit? which is larger? their "
        f"sum); one answer token. Model: attnlab LM, {lm.n_layers} layers, d_model {lm.d_model}, {lm.n_heads} heads, "
        f"with a patch embedding; {b.steps:,} steps of {b.batch_size} questions, seeds {', '.join(map(str, cfg.seeds))}. "
        f"Test accuracy (%) over {b.data.eval_questions:,} fixed questions on held-out images, mean ± std over {n} "
        "seeds. Rows: the mask the model was trained under; columns: the mask it is evaluated under. The first row is "
        "the paper's protocol (causal training, the mask at inference only); the diagonal is training with the mask.",
        "",
        "| trained \\ evaluated | " + " | ".join(MASK_NAMES[m] for m in FUTURE_KINDS) + " |",
        "|---|" + "---:|" * len(FUTURE_KINDS),
    ]
    for t in cfg.variants:
        cells = []
        for e in FUTURE_KINDS:
            c = _cell(by[(t, e)])
            cells.append(f"**{c}**" if t == e else c)
        lines.append(f"| {MASK_NAMES[t]} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell against the causal model evaluated causally (Δ in points; " + SIGNIFICANCE_RULE + "):", "",
              "| trained | evaluated | mean | Δ vs causal | beyond seed noise | per seed |", "|---|---|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['train_mask']} | {r['eval_mask']} | {_cell(r)} | {r['delta']:+.2f} | {r['beyond_noise']} | "
                     + ", ".join(f"{x:.2f}" for x in r["accs"]) + " |")
    lines += ["", "Per question kind, each model under its own training mask (test accuracy %, mean ± std):", "",
              "| trained | same digit? | which is larger? | their sum |", "|---|---:|---:|---:|"]
    for t in cfg.variants:
        cells = []
        for k in ("same", "larger", "sum"):
            xs = [float(runs[(t, s)]["test"]["metrics"].get(f"acc_{k}", float("nan"))) for s in cfg.seeds]
            cells.append(f"{statistics.fmean(xs):.2f}" + (f" ± {statistics.stdev(xs):.2f}" if n > 1 else ""))
        lines.append(f"| {MASK_NAMES[t]} | " + " | ".join(cells) + " |")
    md = out / "masks.md"
    md.write_text("\n".join(lines) + "\n")
    path_csv = out / "masks.csv"
    with path_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["train_mask", "eval_mask", "mean", "std", "delta_vs_causal", "beyond_noise", "per_seed"])
        for r in rows:
            w.writerow([r["train_mask"], r["eval_mask"], f"{r['mean']:.4f}",
                        "" if r["std"] is None else f"{r['std']:.4f}", f"{r['delta']:.4f}", r["beyond_noise"],
                        " ".join(f"{x:.4f}" for x in r["accs"])])
    return [md, path_csv, _plot(out / "masks.png", cfg, by)]


def _plot(path: Path, cfg: CompareConfig, by: dict[tuple[str, str], dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = list(FUTURE_KINDS)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / len(kinds)
    x = np.arange(len(cfg.variants))
    for j, e in enumerate(kinds):
        means = [by[(t, e)]["mean"] for t in cfg.variants]
        stds = [by[(t, e)]["std"] or 0.0 for t in cfg.variants]
        ax.bar(x + (j - (len(kinds) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=f"evaluated under {MASK_NAMES[e]}")
    lo = min(r["mean"] - (r["std"] or 0.0) for r in by.values())
    ax.set_ylim(max(0.0, lo - 5), 100)
    ax.set_xticks(x, [f"trained under {MASK_NAMES[t]}" for t in cfg.variants], fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Two-image digit questions: mean ± std over {len(cfg.seeds)} seeds")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_digits(preset: str, out: str | Path, *, seeds: list[int] | None = None, force: bool = False,
               log: Callable[[str], None] = print) -> list[Path]:
    """Train (or resume) the comparison of ``preset`` into ``out`` and write the mask report; returns every
    report file."""
    from attnlab.compare.runner import run_compare

    cfg = digits_compare(preset, seeds=seeds)
    result = run_compare(cfg, out, resume=not force, force=force, log=log)
    return list(result.files.values()) + write_mask_report(out, cfg, result.runs)
