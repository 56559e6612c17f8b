"""Tables of a prompt-answer comparison (``attnlab compare`` on ``stg`` or ``arith-distractors``): test accuracy
per split, the IID - flipped gap, attention on causes and spurious tokens and, for LeaF, the stage-1 detection
figures, each as mean ± std over seeds, plus every variant against the baseline (difference, the 2-SE rule of
the leaderboard, Welch's p from scipy).

    python benchmarks/prompt_answer_table.py runs/leaf/arith [--teacher runs/leaf/arith-teacher] [--init]
        [--curves curves.png]

Prints Markdown. Reads ``compare.json``, each run's ``result.json`` and, for ``--curves``, its ``metrics.jsonl``
(every logged loss term against the step, mean over seeds: CE, CAT's term, KD and the counterfactual KD).
``--init`` adds the row of the untrained model (the base run's model at initialisation, per seed): the attention
masses before any training.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy import stats

METRICS = [("acc_iid", "IID acc (%)", ".2f"), ("acc_ood", "OOD acc (%)", ".2f"), ("acc_flipped", "flipped acc (%)", ".2f"),
           ("gap", "IID - flipped", ".2f"), ("cause_mass", "attention on causes", ".3f"),
           ("spurious_mass", "attention on spurious", ".3f")]
LEAF = [("leaf_precision", "precision", ".3f"), ("leaf_recall", "recall", ".3f"),
        ("leaf_marked_causal", "causal tokens marked", ".3f"), ("leaf_marked_share", "scored tokens marked", ".3f"),
        ("leaf_cf_per_sample", "counterfactuals per sample", ".2f"), ("leaf_stage1_s", "stage 1 (s)", ".1f")]


def _runs(out: Path) -> tuple[dict, dict[str, list[dict]]]:
    cfg = json.loads((out / "compare.json").read_text())
    runs = {v: [json.loads((out / "runs" / v / f"seed{s}" / "result.json").read_text()) for s in cfg["seeds"]
                if (out / "runs" / v / f"seed{s}" / "result.json").exists()] for v in cfg["variants"]}
    return cfg, runs


def _ms(xs: list[float], fmt: str) -> str:
    if not xs:
        return "—"
    sd = float(np.std(xs, ddof=1)) if len(xs) > 1 else float("nan")
    return f"{np.mean(xs):{fmt}} ± {sd:{fmt}}"


def _init_metrics(cfg: dict) -> list[dict[str, float]]:
    """Test metrics of the untrained model of the comparison's base run, one per seed."""
    import torch

    from attnlab.tasks import EvalContext
    from attnlab.train.config import config_from_dict
    from attnlab.train.trainer import make_task

    out = []
    for seed in cfg["seeds"]:
        base = config_from_dict({**cfg["base"], "seed": seed})
        task = make_task(base)
        torch.manual_seed(seed)
        model = task.build_model().eval()
        out.append(task.evaluate(model, "test", EvalContext(device=torch.device("cpu"), batch_size=256)).metrics)
    return out


def _curves(out: Path, cfg: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for v in cfg["variants"]:
        for s in cfg["seeds"]:
            f = out / "runs" / v / f"seed{s}" / "metrics.jsonl"
            if not f.exists():
                continue
            for line in f.read_text().splitlines():
                r = json.loads(line)
                if r.get("kind") != "train":
                    continue
                for k, x in r.items():
                    if k == "loss" or k.startswith("loss."):
                        terms.setdefault(v, {}).setdefault(k, []).append((r["step"], x))
    fig, axes = plt.subplots(1, len(terms), figsize=(5 * len(terms), 3.6), squeeze=False)
    for ax, (v, by_key) in zip(axes[0], terms.items()):
        for k, pts in sorted(by_key.items()):
            steps = sorted({s for s, _ in pts})
            mean = [np.mean([x for s2, x in pts if s2 == s]) for s in steps]
            ax.plot(steps, mean, label=k.replace("loss.", "") if k != "loss" else "total")
        ax.set(title=v, xlabel="step", ylabel="loss (mean over seeds)", yscale="log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--teacher", type=Path)
    ap.add_argument("--init", action="store_true")
    ap.add_argument("--curves", type=Path)
    a = ap.parse_args()
    cfg, runs = _runs(a.out)
    base = cfg["baseline"]
    vals = {v: {k: [r["test"]["metrics"][k] for r in rs if k in r["test"]["metrics"]] for k, _, _ in METRICS + LEAF}
            for v, rs in runs.items()}
    majority = next(iter(runs.values()))[0]["test"]["metrics"]["majority"]
    print(f"Majority baseline (the training set's most frequent answer, IID split): {majority:.2f} %\n")
    if a.teacher:
        t = json.loads((a.teacher / "result.json").read_text())["test"]["metrics"]
        print("Teacher: " + ", ".join(f"{label} {t[k]:{f}}" for k, label, f in METRICS if k in t) + "\n")
    print("| objective | seeds | " + " | ".join(label for _, label, _ in METRICS) + " |")
    print("|---|---:|" + "---:|" * len(METRICS))
    if a.init:
        init = _init_metrics(cfg)
        print(f"| initialisation | {len(init)} | " + " | ".join(
            _ms([m[k] for m in init], f) for k, _, f in METRICS) + " |")
    for v in runs:
        print(f"| `{v}` | {len(runs[v])} | " + " | ".join(_ms(vals[v][k], f) for k, _, f in METRICS) + " |")
    if a.curves:
        _curves(a.out, cfg, a.curves)
        print(f"\nTraining curves: `{a.curves.name}`")
    leaf = [v for v in runs if vals[v]["leaf_precision"]]
    if leaf:
        print("\nLeaF stage 1 (token-level, against the planted spurious tokens; per run, over the training set):\n")
        print("| objective | " + " | ".join(label for _, label, _ in LEAF) + " |")
        print("|---|" + "---:|" * len(LEAF))
        for v in leaf:
            print(f"| `{v}` | " + " | ".join(_ms(vals[v][k], f) for k, _, f in LEAF) + " |")
    print(f"\nEach objective against `{base}` (2-SE rule: |Δ| > 2 sqrt(s²/n + s_b²/n_b); Welch p from scipy):\n")
    print("| objective | metric | Δ | beyond seed noise | Welch p |")
    print("|---|---|---:|---|---:|")
    better_high = {"acc_iid", "acc_ood", "acc_flipped", "cause_mass"}
    for v in runs:
        if v == base:
            continue
        for k, label, f in METRICS:
            x, y = vals[v][k], vals[base][k]
            if len(x) < 2 or len(y) < 2:
                continue
            d = float(np.mean(x) - np.mean(y))
            se = math.sqrt(np.var(x, ddof=1) / len(x) + np.var(y, ddof=1) / len(y))
            p = stats.ttest_ind(x, y, equal_var=False).pvalue
            good = (d > 0) == (k in better_high)
            beyond = abs(d) > 2 * se
            if k == "gap":  # a gap below zero is not better than none: say only whether it moved
                verdict = "yes" if beyond else "no"
            else:
                verdict = f"yes: {'better' if good else 'worse'}" if beyond else "no"
            print(f"| `{v}` | {label} | {d:+{f}} | {verdict} | {p:.3g} |")


if __name__ == "__main__":
    main()
