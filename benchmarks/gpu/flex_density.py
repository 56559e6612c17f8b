"""Does FlexAttention get faster as the mask gets sparser? A lean density sweep for a short GPU lease.

The ``sparsity`` suite of ``attnlab bench`` sweeps 13 masks over two backends and checks each family first; on a
fresh GPU every mask is a new compile. This script keeps one family, sliding windows of T/4 ... T/256 plus plain
causal, at T = 8192 (B 1, H 16, D 64, bf16), through ``softmax_attention(impl="flex")`` (the package's compiled
FlexAttention and its cached BlockMask), each mask first compared with ``impl="sdpa"`` (a dense boolean mask, the
same dtype) on the same inputs. Forward and forward+backward are timed with grad enabled (one compiled graph per
mask) by ``triton.testing.do_bench`` (median), beside raw causal SDPA (FlashAttention). The density exponent is the
slope of log(time) against log(density): 1 is time proportional to density, 0 no gain from sparsity.

Rows are appended to ``flex-density.jsonl`` as they are measured; ``flex-density-cuda.md`` is written at the end.
``--dry-run`` runs the same code on the CPU at T = 256 (FlexAttention eager, forward only).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script
from gpu_common import median_ms  # noqa: E402


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    from attnlab.masks import causal, dense, sliding_window
    from attnlab.ops.softmax import softmax_attention

    dry = a.dry_run
    if not dry and not torch.cuda.is_available():
        print("flex_density.py: needs a CUDA device (or --dry-run)", file=sys.stderr)
        return 2
    stop_at = time.monotonic() + a.max_seconds
    dev, dtype = ("cpu", torch.float32) if dry else ("cuda", torch.bfloat16)
    T, B, H, D = (256, 1, 2, 16) if dry else (8192, 1, 16, 64)
    a.out.mkdir(parents=True, exist_ok=True)
    log = a.out / "flex-density.jsonl"
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, D, generator=gen).to(dev, dtype).requires_grad_(not dry) for _ in range(3))
    go = torch.randn(B, H, T, D, generator=gen).to(dev, dtype)
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def timed(call: Callable[[], torch.Tensor]) -> dict[str, float]:
        out: dict[str, float] = {"fwd ms": median_ms(call, dry=dry, rep_ms=50)}
        if not dry:
            out["fwd+bwd ms"] = median_ms(lambda: torch.autograd.grad(call(), (q, k, v), go), dry=dry, rep_ms=50)
        return out

    try:
        emit({"kind": "baseline", "mask": "sdpa causal (flash)", "T": T, "density": 0.5 + 0.5 / T, "status": "ok",
              **timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))})
    except Exception as exc:
        emit({"kind": "baseline", "mask": "sdpa causal", "status": f"error: {type(exc).__name__}: {exc}"[:300]})
    masks = [causal()] + [sliding_window(max(1, T // d)) for d in (4, 16, 64, 256)]
    for mask in masks:
        row: dict[str, Any] = {"kind": "flex", "mask": mask.name, "T": T}
        if time.monotonic() > stop_at:
            emit({**row, "status": "skipped: deadline"})
            continue
        try:
            row["density"] = float(dense(mask, T, T).double().mean())
            t0 = time.perf_counter()
            with torch.no_grad():
                got = softmax_attention(q, k, v, mask=mask, impl="flex")
                ref = softmax_attention(q, k, v, mask=mask, impl="sdpa")
            row["first call s"] = time.perf_counter() - t0
            err = float((got.double() - ref.double()).norm() / ref.double().norm())
            row["rel err vs sdpa"] = err
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            if not err <= tol:
                emit({**row, "status": f"FAILED: rel err {err:.3g} > {tol:g}"})
                continue
            row |= timed(lambda: softmax_attention(q, k, v, mask=mask, impl="flex"))
            row["status"] = "ok"
        except Exception as exc:
            row["status"] = f"error: {type(exc).__name__}: {exc}"[:300]
        emit(row)
    ok = [r for r in rows if r["kind"] == "flex" and r.get("status") == "ok"]
    base = next((r for r in rows if r["kind"] == "baseline" and r.get("status") == "ok"), None)
    md = ["# FlexAttention time by mask density" + (" (CPU dry run)" if dry else " (CUDA)"), "",
          f"`benchmarks/gpu/flex_density.py`: T = {T}, B {B}, H {H}, D {D}, {str(dtype).removeprefix('torch.')}; "
          f"torch {torch.__version__}" + ("" if dry else f", {torch.cuda.get_device_name(0)}") + ".", "",
          "| mask | density | rel err vs sdpa | fwd ms | fwd ×sdpa-causal | fwd+bwd ms | fwd+bwd ×sdpa-causal | "
          "first call s (compile) | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def ratio(key: str) -> str:
            return f"{r[key] / base[key]:.3f}" if base and key in r and key in base else ""

        def num(key: str, fmt: str) -> str:
            return format(r[key], fmt) if isinstance(r.get(key), float) else ""

        md.append(f"| {r['mask']} | {num('density', '.4f')} | {num('rel err vs sdpa', '.2e')} | "
                  f"{num('fwd ms', '.3f')} | {ratio('fwd ms')} | {num('fwd+bwd ms', '.3f')} | {ratio('fwd+bwd ms')} | "
                  f"{num('first call s', '.1f')} | {r['status']} |")
    if len(ok) >= 2:
        md.append("")
        for key in ("fwd ms", "fwd+bwd ms"):
            if all(key in r for r in ok):
                e = fit_exponent([r["density"] for r in ok], [r[key] for r in ok])
                md.append(f"Density exponent, {key.removesuffix(' ms')}: **{e:.2f}** (1 = proportional to density).")
                emit({"kind": "exponent", "what": key, "exponent": e, "points": len(ok)})
    (a.out / "flex-density-cuda.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
