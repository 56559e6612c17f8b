"""LeaF stage 1 alone (spec causal_training.md B.3, acceptance figure 4): detection quality of the confounder marks
against the planted spurious tokens over a task's training set, for several thresholds p, and the control with the
teacher equal to the student (which must mark nothing).

    python benchmarks/leaf_detection.py --teacher runs/leaf/arith-teacher \
        --students runs/leaf/arith/runs/plain/seed0 runs/leaf/arith/runs/plain/seed1 ... [--p 0.05 0.10]

Prints Markdown: one row per (p, student), then mean ± std over the students, and the teacher = student rows.
No training: two input-gradient passes per training example and model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from attnlab.tasks.distill import LeafOptions, StudentOptions, TeacherOptions
from attnlab.tasks.prompt_answer import PromptAnswerOptions
from attnlab.train.loading import load_required_checkpoints, load_trained

FIGURES = [("leaf_precision", "precision", ".3f"), ("leaf_recall", "recall (spurious tokens marked)", ".3f"),
           ("leaf_marked_causal", "causal tokens marked", ".3f"), ("leaf_marked_share", "scored tokens marked", ".3f"),
           ("leaf_cf_per_sample", "counterfactuals per sample", ".2f"), ("leaf_stage1_s", "stage 1 (s)", ".1f")]


def detect(teacher: Path, student: Path, p: float) -> dict[str, float]:
    """Stage 1 over the student run's training set, through the same path a LeaF run takes."""
    s = load_trained(student, device="cpu")
    opts = PromptAnswerOptions(objective="leaf", teacher=TeacherOptions(checkpoint=str(teacher)),
                               student=StudentOptions(checkpoint=str(student)), leaf=LeafOptions(p=p))
    task = type(s.task)(s.task.model_cfg, s.task.data_cfg, seed=0, options=opts)
    load_required_checkpoints(task)
    return task.leaf_data.stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--students", type=Path, nargs="+", required=True)
    ap.add_argument("--p", type=float, nargs="+", default=[0.05, 0.10])
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("| p | student | " + " | ".join(label for _, label, _ in FIGURES) + " |")
    print("|---:|---|" + "---:|" * len(FIGURES))
    summary = {}
    for p in a.p:
        rows = [detect(a.teacher, s, p) for s in a.students]
        for s, r in zip(a.students, rows):
            print(f"| {p} | `{s}` | " + " | ".join(f"{r[k]:{f}}" for k, _, f in FIGURES) + " |")
        summary[p] = rows
    print("\nMean ± std over the students:\n")
    print("| p | " + " | ".join(label for _, label, _ in FIGURES) + " |")
    print("|---:|" + "---:|" * len(FIGURES))
    for p, rows in summary.items():
        cells = []
        for k, _, f in FIGURES:
            xs = [r[k] for r in rows]
            cells.append(f"{np.mean(xs):{f}} ± {np.std(xs, ddof=1) if len(xs) > 1 else float('nan'):{f}}")
        print(f"| {p} | " + " | ".join(cells) + " |")
    print("\nControl, teacher = student (each student against itself; must mark nothing):\n")
    print("| p | student | scored tokens marked | counterfactuals per sample |")
    print("|---:|---|---:|---:|")
    for p in a.p:
        for s in a.students:
            r = detect(s, s, p)
            print(f"| {p} | `{s}` | {r['leaf_marked_share']:.3f} | {r['leaf_cf_per_sample']:.2f} |")


if __name__ == "__main__":
    main()
