"""AutoHFormer's windowed decayed attention: the reference, dense and banded forms timed in one process.

    .venv/bin/python benchmarks/decayed_forms.py [--quick] [--threads 1] [--out benchmarks/results/decayed-forms]

Per case (batch, heads, sequence length, window), one training call of each form: forward with the relative term
and the multiplicative decay, then backward to q, k, v, the table and gamma, the forms timed interleaved (a, b, c,
a, b, c, ...; the median of the samples), so a slow spell of a shared machine hits them alike and the ratio to the
reference is fair. The default cases are the ETTh1 AutoHFormer runs' shapes in one layer (batch 32, 4 heads of
16, look-back 336 plus horizon 96: 431 teacher-forced steps) with the preset's window of 32 and the no-window
ablation's window of 864 (``auto`` picks banded for the first, dense for the second). Before timing, every form's
output and gradients are checked against the reference in float64 on the same sequence length and window (batch
1); a form that disagrees is reported instead of a speed.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
from pathlib import Path

import torch

from attnlab.bench.measure import time_fns
from attnlab.ops.decayed import decayed_window_attention, relative_table, sinusoidal_offsets

FORMS = ("reference", "dense", "banded")
CASES = [(32, 4, 431, 32), (32, 4, 431, 864), (32, 4, 216, 864)]  # (B, H, T, window)
QUICK_CASES = [(2, 2, 40, 8), (2, 2, 40, 80)]


def _inputs(B: int, H: int, T: int, window: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    D = 16
    q, k, v = (torch.randn(B, H, T, D, generator=g, dtype=dtype).requires_grad_() for _ in range(3))
    r = sinusoidal_offsets(window // 2 + 1, D, dtype=dtype)
    rel = relative_table(q.detach(), r, 1 / math.sqrt(D)).requires_grad_()  # (B, H, T, R), a leaf here
    gamma = torch.tensor(0.5, dtype=dtype, requires_grad=True)
    return [q, k, v, rel, gamma]


def _call(impl: str, window: int, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """One training call: the output and the gradients of ``(o * w).sum()`` to every input."""
    q, k, v, rel, gamma = inputs
    o = decayed_window_attention(q, k, v, lookback=window // 2, decay="multiplicative", gamma=gamma, rel=rel,
                                 impl=impl)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(7), dtype=o.dtype)
    return [o.detach(), *torch.autograd.grad((o * w).sum(), inputs)]


def check(H: int, T: int, window: int) -> dict[str, float]:
    """Largest absolute difference to the reference, output and gradients, per form (float64, batch 1)."""
    inputs = _inputs(1, H, T, window, torch.float64, seed=0)
    ref = _call("reference", window, inputs)
    return {impl: max(float((a - b).abs().max()) for a, b in zip(_call(impl, window, inputs), ref))
            for impl in FORMS}


def run(cases: list[tuple[int, int, int, int]], *, repeats: int) -> list[dict[str, object]]:
    rows = []
    for B, H, T, window in cases:
        errors = check(H, T, window)
        ok = [impl for impl in FORMS if errors[impl] <= 1e-10]
        inputs = _inputs(B, H, T, window, torch.float32, seed=1)
        timings = time_fns({impl: (lambda impl=impl: _call(impl, window, inputs)) for impl in ok}, warmup=1,
                           repeats=repeats, min_repeats=repeats, budget_s=0.0)
        for impl in FORMS:
            row: dict[str, object] = {"B": B, "H": H, "T": T, "window": window, "form": impl,
                                      "max err f64": errors[impl]}
            if impl in timings:
                row["ms"] = 1000 * timings[impl].median
                row["× reference"] = timings[impl].median / timings["reference"].median
            rows.append(row)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    cols = ["B", "H", "T", "window", "form", "ms", "× reference", "max err f64"]
    fmt = {"ms": "{:.1f}", "× reference": "{:.2f}", "max err f64": "{:.1e}"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt.get(c, "{}").format(r[c]) if c in r else "failed check" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny cases (a smoke test)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls of each form (median reported)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier on a busy machine)")
    ap.add_argument("--out", type=Path, help="a directory for results.md (refused if it exists there)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = run(QUICK_CASES if args.quick else CASES, repeats=args.repeats)
    command = " ".join(["python benchmarks/decayed_forms.py", *(sys.argv[1:] if argv is None else argv)])
    text = (f"`{command}`\n\nForward + backward of one layer's attention, median of {args.repeats} interleaved calls; "
            f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}.\n\n"
            + table(rows) + "\n")
    print(text)
    if args.out is not None:
        path = args.out / "results.md"
        if path.exists():
            raise SystemExit(f"--out: {path} exists; move it away or choose another directory")
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


if __name__ == "__main__":
    main()
