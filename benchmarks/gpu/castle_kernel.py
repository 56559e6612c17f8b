"""The Triton CASTLE kernel on a CUDA device: correctness, a launch-configuration sweep, speed and memory.

Three phases, each its own process in ``benchmarks/gpu/run_all.sh`` (an illegal memory access would spoil the CUDA
context of every case after it), each appending rows to ``castle-kernel.jsonl`` in ``--out`` as it goes, so that a
phase stopped at its deadline keeps what it measured:

``checks``  ``castle_triton`` (float32 and bfloat16, D 64 and 128, full CASTLE and CASTLE-SWL, T = 1000: a ragged
            last block) against the chunked form and Theorem 1 (``castle_parallel``), both in float64 on the same
            rounded inputs: relative Frobenius error of the output and of all six gradients. Tolerances: float32
            (IEEE dots) 1e-4, bfloat16 3e-2 (as in tests/ops/test_castle_triton.py's GPU tier); chunked against
            Theorem 1 in float64, 1e-10.
``sweep``   chunk size (the block: C x C score tiles) x ``num_warps`` at T = 8192, bfloat16, forward+backward, for
            each head dim; the fastest configuration is written to ``castle-kernel-best.json``.
``speed``   forward and forward+backward of CASTLE (8 heads; the sweep's best configuration, else the default) against
            SDPA's FlashAttention backend (14 heads: equal parameters, 4 x 14 = 7 x 8 head-projections of the same
            head dim, ``attnlab.layers.castle.heads_for_parity``), bfloat16, causal, T in {2k, 4k, 8k, 16k} with
            B = 16384 / T (the same tokens per call), D in {64, 128}; CASTLE-SWL (lookahead 512) as well; peak memory
            of each call above what its inputs hold. Times are ``triton.testing.do_bench`` medians (CUDA events).

``--render`` rebuilds ``castle-kernel-cuda.md``, ``.csv`` and ``.png`` from the JSONL (here or on the device).
``--dry-run`` runs every phase on the CPU at toy sizes through Triton's interpreter (for the tests).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

if "--dry-run" in sys.argv:  # Triton's interpreter must be chosen before triton is first imported
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script
from gpu_common import RowLog, median_ms, peak_device_mib, rel_err, short, step_pair  # noqa: E402

JSONL = "castle-kernel.jsonl"
BEST = "castle-kernel-best.json"
STEM = "castle-kernel-cuda"
NAMES = ("out", "q_u", "k_u", "v_u", "q_c", "k_c", "v_c")
TOL = {"float32": 1e-4, "bfloat16": 3e-2}
TOL_CHUNKED = 1e-10
STD_HEADS, CASTLE_HEADS = 14, 8  # equal parameters: 4 * 14 = 7 * 8 (heads_for_parity(14) == 8)
TOKENS = 16384


# ------------------------------------------------------------------------------------------------------ plumbing

class Run(RowLog):
    """Where rows go (JSONL, one per line, flushed), the device, the sizes and the deadline of this phase."""

    def __init__(self, out: Path, max_seconds: float, dry_run: bool) -> None:
        super().__init__(out, JSONL, max_seconds)
        self.dry = dry_run
        self.device = "cpu" if dry_run else "cuda"


def bench_ms(fn: Callable[[], Any], run: Run) -> float:
    """Median milliseconds of ``fn`` (CUDA events; a wall clock in a dry run)."""
    return median_ms(fn, dry=run.dry, rep_ms=60)


def peak_mib(fn: Callable[[], Any], run: Run) -> float | None:
    """Peak device memory of one call of ``fn`` above what was allocated before it (MiB); None on the CPU."""
    return peak_device_mib(fn, dry=run.dry)


def randn(shape: tuple[int, ...], dtype: torch.dtype, device: str, gen: torch.Generator,
          grad: bool = True) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype).requires_grad_(grad)


def env_row(run: Run, phase: str) -> None:
    import triton

    info: dict[str, Any] = {"kind": "env", "phase": phase, "torch": torch.__version__, "triton": triton.__version__,
                            "python": sys.version.split()[0]}
    if not run.dry:
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "sms": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
                 "capability": f"{p.major}.{p.minor}"}
    run.row(**info)


# -------------------------------------------------------------------------------------------------------- checks

def phase_checks(run: Run, dtypes: tuple[str, ...] = ("float32", "bfloat16"), dims: tuple[int, ...] | None = None,
                 swl: bool = True) -> None:
    from attnlab.ops.castle import castle_chunked, castle_parallel
    from attnlab.ops.castle.triton_kernel import castle_triton

    B, H, T = (1, 1, 24) if run.dry else (1, 4, 1000)
    dims = (16,) if run.dry else (dims or (64, 128))
    lookaheads = ((None, 7) if run.dry else (None, 200)) if swl else (None,)
    seed = 0
    for dtype in (getattr(torch, name) for name in dtypes):
        for D in dims:
            for la in lookaheads:
                seed += 1
                name = str(dtype).removeprefix("torch.")
                row: dict[str, Any] = {"kind": "check", "dtype": name, "B": B, "H": H, "T": T, "D": D,
                                       "lookahead": la, "tol": TOL[name]}
                if run.left() < 0:
                    run.row(**row, status="skipped: deadline")
                    continue
                try:
                    gen = torch.Generator().manual_seed(seed)
                    xs = [randn((B, H, T, D), dtype, run.device, gen) for _ in range(6)]
                    go = torch.randn((B, H, T, D), generator=gen).to(run.device)
                    scale = D ** -0.5
                    out = castle_triton(*xs, la, scale)
                    got = (out, *torch.autograd.grad(out, xs, go.to(dtype)))
                    refs = {}
                    for form, fn in (("chunked", castle_chunked), ("theorem1", castle_parallel)):
                        xr = [x.detach().double().requires_grad_(True) for x in xs]
                        o = fn(*xr, lookahead=la, scale=scale)
                        refs[form] = (o, *torch.autograd.grad(o, xr, go.double()))
                    for form, ref in refs.items():
                        row[f"err vs {form}"] = {n: rel_err(a, b) for n, a, b in zip(NAMES, got, ref)}
                    row["err chunked vs theorem1 (float64)"] = max(rel_err(a, b) for a, b in
                                                                  zip(refs["chunked"], refs["theorem1"]))
                    worst = max(max(row["err vs chunked"].values()), max(row["err vs theorem1"].values()))
                    row["max err"] = worst
                    finite = all(bool(torch.isfinite(t).all()) for t in got)
                    ok = finite and worst <= TOL[name] and row["err chunked vs theorem1 (float64)"] <= TOL_CHUNKED
                    row["status"] = "ok" if ok else "FAILED" + ("" if finite else " (non-finite values)")
                except Exception as exc:
                    row["status"] = "error: " + short(exc)
                run.row(**row)


# --------------------------------------------------------------------------------------------------------- sweep

def sweep_configs(D: int, dry: bool) -> list[tuple[int, int]]:
    """(chunk, num_warps) candidates: 16-bit operands, C x C score tiles plus C x D state tiles per program."""
    if dry:
        return [(16, 4), (16, 8)]
    if D <= 64:
        return [(c, w) for c in (32, 64, 128) for w in (4, 8)]
    return [(32, 4), (64, 4), (64, 8)]  # D = 128: C = 128 tiles would not fit in shared memory


def castle_call(D: int, T: int, run: Run, *, dtype: torch.dtype, lookahead: int | None = None,
                cfg: tuple[int, int] | None = None, heads: int = CASTLE_HEADS, batch: int = 1
                ) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(forward, forward+backward) closures of one CASTLE kernel call on fresh random inputs."""
    from attnlab.ops.castle.triton_kernel import castle_triton

    gen = torch.Generator().manual_seed(T + D)
    xs = [randn((batch, heads, T, D), dtype, run.device, gen) for _ in range(6)]
    go = torch.randn((batch, heads, T, D), generator=gen).to(device=run.device, dtype=dtype)
    kw: dict[str, Any] = {} if cfg is None else {"chunk_size": cfg[0], "num_warps": cfg[1]}
    scale = D ** -0.5

    return step_pair(lambda: castle_triton(*xs, lookahead, scale, **kw), xs, go)


def flash_call(D: int, T: int, run: Run, *, dtype: torch.dtype, heads: int = STD_HEADS, batch: int = 1
               ) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(forward, forward+backward) closures of causal SDPA pinned to its FlashAttention backend (CUDA)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator().manual_seed(T + D + 1)
    q, k, v = (randn((batch, heads, T, D), dtype, run.device, gen) for _ in range(3))
    go = torch.randn((batch, heads, T, D), generator=gen).to(device=run.device, dtype=dtype)
    backends = [SDPBackend.MATH] if run.dry else [SDPBackend.FLASH_ATTENTION]

    def call() -> torch.Tensor:
        with sdpa_kernel(backends):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return step_pair(call, (q, k, v), go)


def phase_sweep(run: Run) -> None:
    T, B = (32, 1) if run.dry else (8192, TOKENS // 8192)
    dims = (16,) if run.dry else (64, 128)
    dtype = torch.float32 if run.dry else torch.bfloat16
    best: dict[str, Any] = {}
    for D in dims:
        results = []
        for chunk, warps in sweep_configs(D, run.dry):
            row: dict[str, Any] = {"kind": "sweep", "T": T, "B": B, "H": CASTLE_HEADS, "D": D,
                                   "dtype": str(dtype).removeprefix("torch."), "chunk": chunk, "num_warps": warps}
            if run.left() < 0:
                run.row(**row, status="skipped: deadline")
                continue
            try:
                fwd, fb = castle_call(D, T, run, dtype=dtype, cfg=(chunk, warps), batch=B)
                row["fwd+bwd ms"] = bench_ms(fb, run)
                row["fwd ms"] = bench_ms(fwd, run)
                row["status"] = "ok"
                results.append(row)
            except Exception as exc:
                row["status"] = "error: " + short(exc)
            run.row(**row)
        if results:
            win = min(results, key=lambda r: r["fwd+bwd ms"])
            best[str(D)] = {"chunk": win["chunk"], "num_warps": win["num_warps"], "fwd+bwd ms": win["fwd+bwd ms"]}
    (run.out / BEST).write_text(json.dumps(best, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------------- speed

def phase_speed(run: Run) -> None:
    lengths = (32,) if run.dry else (2048, 4096, 8192, 16384)
    dims = (16,) if run.dry else (64, 128)
    dtype = torch.float32 if run.dry else torch.bfloat16
    tokens = 32 if run.dry else TOKENS
    best_path = run.out / BEST
    best = json.loads(best_path.read_text()) if best_path.exists() else {}
    cases = [(D, T, la) for la in (None, 512) for D in dims for T in lengths]  # SWL after the main grid
    for D, T, la in cases:
        B = max(1, tokens // T)
        cfg = (best[str(D)]["chunk"], best[str(D)]["num_warps"]) if str(D) in best else None
        row: dict[str, Any] = {"kind": "speed", "T": T, "B": B, "D": D, "dtype": str(dtype).removeprefix("torch."),
                               "lookahead": la, "castle heads": CASTLE_HEADS, "flash heads": STD_HEADS,
                               "castle config": list(cfg) if cfg else "default"}
        if run.left() < 0:
            run.row(**row, status="skipped: deadline")
            continue
        try:
            for label, (fwd, fb) in (("flash", flash_call(D, T, run, dtype=dtype, batch=B)),
                                     ("castle", castle_call(D, T, run, dtype=dtype, lookahead=la, cfg=cfg, batch=B))):
                row[f"{label} fwd ms"] = bench_ms(fwd, run)
                row[f"{label} fwd+bwd ms"] = bench_ms(fb, run)
                row[f"{label} fwd MiB"] = peak_mib(fwd, run)
                row[f"{label} fwd+bwd MiB"] = peak_mib(fb, run)
                if not run.dry:
                    torch.cuda.empty_cache()
            row["fwd ratio"] = row["castle fwd ms"] / row["flash fwd ms"]
            row["fwd+bwd ratio"] = row["castle fwd+bwd ms"] / row["flash fwd+bwd ms"]
            # FlashAttention's causal FLOPs: 2 matmuls of B*H*T*T*D/2 multiply-adds forward, 2.5x that backward
            f = 4 * B * STD_HEADS * T * T * D / 2
            row["flash fwd TFLOP/s"] = f / (row["flash fwd ms"] * 1e-3) / 1e12
            row["flash fwd+bwd TFLOP/s"] = 3.5 * f / (row["flash fwd+bwd ms"] * 1e-3) / 1e12
            row["status"] = "ok"
        except Exception as exc:
            row["status"] = "error: " + short(exc)
        run.row(**row)


# -------------------------------------------------------------------------------------------------------- render

def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1 else f"{v:,.2f}"
    return str(v)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return lines


def render(out: Path) -> list[Path]:
    """Markdown, CSV and a PNG from ``castle-kernel.jsonl`` (the newest row of each case wins)."""
    rows = [json.loads(line) for line in (out / JSONL).read_text().splitlines() if line.strip()]
    env = [r for r in rows if r["kind"] == "env"]
    checks = [r for r in rows if r["kind"] == "check"]
    sweep = [r for r in rows if r["kind"] == "sweep"]
    speed = [r for r in rows if r["kind"] == "speed"]
    for r in checks:
        for form in ("chunked", "theorem1"):
            e = r.get(f"err vs {form}")
            if isinstance(e, dict):
                r[f"out vs {form}"] = e["out"]
                r[f"worst grad vs {form}"] = max(v for k, v in e.items() if k != "out")
    md = [f"# Triton CASTLE kernel on CUDA ({env[-1].get('gpu', 'cpu dry run') if env else 'unknown device'})", "",
          "Made by `benchmarks/gpu/castle_kernel.py` (see its docstring for the protocol).", ""]
    if env:
        e = env[-1]
        md += [f"torch {e['torch']}, triton {e['triton']}, Python {e['python']}"
               + (f", {e['gpu']} ({e['sms']} SMs, {e['memory_gib']} GiB, sm_{e['capability']})" if "gpu" in e else ""),
               ""]
    md += ["## Correctness: kernel vs the chunked form and Theorem 1 (float64), relative Frobenius error", ""]
    md += _table(checks, ["dtype", "D", "T", "lookahead", "out vs theorem1", "worst grad vs theorem1",
                          "out vs chunked", "worst grad vs chunked", "err chunked vs theorem1 (float64)", "tol",
                          "status"])
    md += ["", "## Launch-configuration sweep (forward+backward, CASTLE heads, B*T = 16384)", ""]
    md += _table(sweep, ["D", "T", "B", "dtype", "chunk", "num_warps", "fwd ms", "fwd+bwd ms", "status"])
    md += ["", "## CASTLE (8 heads) vs FlashAttention (14 heads) at equal parameters, bf16, causal", "",
           "Ratios are CASTLE time / FlashAttention time (target: fwd+bwd <= 1.5 at T = 8192). MiB: peak memory of "
           "one call above its inputs.", ""]
    md += _table(speed, ["D", "T", "B", "lookahead", "castle config", "flash fwd ms", "castle fwd ms", "fwd ratio",
                         "flash fwd+bwd ms", "castle fwd+bwd ms", "fwd+bwd ratio", "flash fwd+bwd TFLOP/s",
                         "flash fwd+bwd MiB", "castle fwd+bwd MiB", "status"])
    paths = [out / f"{STEM}.md", out / f"{STEM}.csv"]
    paths[0].write_text("\n".join(md) + "\n")
    cols = sorted({k for r in speed for k in r})
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows([{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()} for r in speed])
    ok = [r for r in speed if r.get("status") == "ok"]
    if ok:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), dpi=110)
        for ax, key in zip(axes, ("fwd", "fwd+bwd")):
            for D in sorted({r["D"] for r in ok}):
                for la, ls in ((None, "-"), (512, ":")):
                    sel = sorted((r for r in ok if r["D"] == D and r["lookahead"] == la), key=lambda r: r["T"])
                    if not sel:
                        continue
                    tag = "castle" if la is None else f"castle-swl W={la}"
                    ax.plot([r["T"] for r in sel], [r[f"castle {key} ms"] for r in sel], ls, marker="o",
                            label=f"{tag} D={D}")
                    if la is None:
                        ax.plot([r["T"] for r in sel], [r[f"flash {key} ms"] for r in sel], "--", marker="s",
                                label=f"flash D={D}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("T (B = 16384 / T)")
            ax.set_ylabel("ms (median)")
            ax.set_title(f"{key}: CASTLE 8 heads vs FlashAttention 14 heads (bf16)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / f"{STEM}.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", choices=("checks", "sweep", "speed", "all"), default="all")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="deadline of this invocation (cases after it "
                    "are recorded as skipped)")
    ap.add_argument("--render", action="store_true", help="only rebuild the Markdown/CSV/PNG from the JSONL")
    ap.add_argument("--dry-run", action="store_true", help="CPU, toy sizes, Triton's interpreter (for the tests)")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="checks: dtypes (default float32,bfloat16)")
    ap.add_argument("--dims", default="64,128", help="checks: head dims (default 64,128)")
    ap.add_argument("--no-swl", action="store_true", help="checks: full CASTLE only (no lookahead-window case)")
    a = ap.parse_args(argv)
    if a.render:
        for p in render(a.out):
            print("wrote", p)
        return 0
    if not a.dry_run and not torch.cuda.is_available():
        print("castle_kernel.py: needs a CUDA device (or --dry-run)", file=sys.stderr)
        return 2
    run = Run(a.out, a.max_seconds, a.dry_run)
    phases = ("checks", "sweep", "speed") if a.phase == "all" else (a.phase,)
    env_row(run, ",".join(phases))
    dtypes = tuple(d.strip() for d in a.dtypes.split(",") if d.strip())
    if not dtypes or any(d not in TOL for d in dtypes):
        ap.error(f"--dtypes: expected a comma list of {', '.join(TOL)}, got {a.dtypes!r}")
    try:
        dims = tuple(int(d) for d in a.dims.split(",") if d.strip())
    except ValueError:
        dims = ()
    if not dims or any(not 1 <= d <= 128 for d in dims):
        ap.error(f"--dims: expected a comma list of head dims in [1, 128], got {a.dims!r}")
    for ph in phases:
        if ph == "checks":
            phase_checks(run, dtypes, dims, swl=not a.no_swl)
        else:
            {"sweep": phase_sweep, "speed": phase_speed}[ph](run)
    render(a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
