"""flash-linear-attention (``impl="fla"``) on a CUDA device: correctness against attnlab's reference, speed and
memory against attnlab's chunked form and SDPA (issue 15).

Every measurement is appended as one JSON row to ``linear-fla.jsonl`` in ``--out`` as soon as it is taken, so a run
stopped at its deadline (``--max-seconds``: later cases are recorded as skipped) or killed keeps what it measured;
``linear-fla-cuda.md`` and ``linear-fla-cuda.csv`` are rebuilt from the JSONL at the end (or with ``--render``).
For each head dim D (64, then 128) it runs, in this order, so that a deadline cuts the least important part:

``check``  ``linear_attention(..., impl="fla")`` and ``impl="chunked"`` (attnlab's chunked form) against the float64
           recurrent form (the specification, :mod:`attnlab.ops.linear.reference`) on the same rounded inputs:
           relative Frobenius error of the output and of the q, k, v gradients. B=1, H=16, T=1000 (a ragged last
           chunk), elu1 features, bfloat16 first (the dtype that is timed, with the autotuning of the timings),
           float32 after the timings (one launch configuration per kernel: it is checked, not timed). Tolerances
           (as in tests/ops/test_linear_fla.py): float32 2e-3 (TF32 dot products), bfloat16 2e-2. The first fla call
           of each (dtype, D) compiles (and autotunes) fla's kernels; its wall time is in the row.
``speed``  forward (no autograd graph) and forward+backward (``torch.autograd.grad`` of q, k, v) in bfloat16, B=1,
           H=16, T in {1k, 2k, 4k, 8k, 16k, 32k}: SDPA (``scaled_dot_product_attention(is_causal=True)`` pinned to its
           FlashAttention backend), attnlab's chunked form (chunk 64) and fla, both through the public
           ``linear_attention`` (elu1 feature map, normaliser and layout changes included). Times are medians of
           ``triton.testing.do_bench`` (warmup 10 ms, rep 40 ms, CUDA events); MiB is the peak memory of one call
           above what was allocated before it. The Markdown gives fla/SDPA and fla/chunked and the length from which
           fla is faster than SDPA. A failed or missing fla check is printed above its times.

fla's autotuning: ``--fla-autotune small`` (default) lets each kernel time one configuration per tile size
(:func:`attnlab.ops.linear.fla_backend.set_fla_autotuning`), about 18 compilations per (dtype, D) instead of ~160;
``full`` is fla as shipped (minutes on a fresh machine). ``--quick``: D=64 and T in {1k, 4k, 16k} only.
``--dry-run``: CPU, tiny sizes, float32 timings, SDPA and the chunked form only (fla needs CUDA), for the tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared helpers beside this script
from gpu_common import RowLog, median_ms, peak_device_mib, rel_err, step_pair  # noqa: E402
from gpu_common import short as short_error  # noqa: E402

JSONL = "linear-fla.jsonl"
STEM = "linear-fla-cuda"
TOL = {"float32": 2e-3, "bfloat16": 2e-2}
GRADS = ("q", "k", "v")
METHODS = ("sdpa", "chunked", "fla")


# ------------------------------------------------------------------------------------------------------ plumbing

class Run(RowLog):
    """Where rows go (JSONL, one per line, flushed), the device, the sizes and the deadline."""

    def __init__(self, out: Path, max_seconds: float, dry_run: bool, quick: bool, dims: tuple[int, ...]) -> None:
        super().__init__(out, JSONL, max_seconds)
        self.dry = dry_run
        self.device = "cpu" if dry_run else "cuda"
        self.B, self.H = 1, (2 if dry_run else 16)
        self.check_T = 40 if dry_run else 1000
        if dry_run:
            self.lengths: tuple[int, ...] = (64, 128)
            self.dims = (16,)
        else:
            self.lengths = (1024, 4096, 16384) if quick else (1024, 2048, 4096, 8192, 16384, 32768)
            self.dims = (64,) if quick else dims
        self.speed_dtype = torch.float32 if dry_run else torch.bfloat16
        self.sdpa_pinned = not dry_run  # FlashAttention backend on CUDA; dropped (and recorded) if it refuses


def short(exc: BaseException) -> str:
    return short_error(exc, 240)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def sync(run: Run) -> None:
    if not run.dry:
        torch.cuda.synchronize()


def bench_ms(fn: Callable[[], Any], run: Run) -> float:
    """Median milliseconds of ``fn`` (CUDA events; a wall clock in a dry run)."""
    return median_ms(fn, dry=run.dry, rep_ms=40)


def peak_mib(fn: Callable[[], Any], run: Run) -> float | None:
    """Peak device memory of one call of ``fn`` above what was allocated before it (MiB); None on the CPU."""
    return peak_device_mib(fn, dry=run.dry)


def env_row(run: Run, autotune: str) -> None:
    info: dict[str, Any] = {"kind": "env", "torch": torch.__version__, "python": sys.version.split()[0],
                            "fla autotune": autotune, "dry run": run.dry}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    try:
        from importlib.metadata import version

        info["fla-core"] = version("fla-core")
    except Exception:
        info["fla-core"] = None
    if not run.dry:
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "sms": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
                 "capability": f"{p.major}.{p.minor}"}
    run.row(**info)


def setup_fla(run: Run, mode: str) -> str | None:
    """Import fla and set its autotuning; None when ready, else why not (recorded in the fla rows)."""
    if run.dry:
        return "dry run on the CPU (fla needs CUDA)"
    from attnlab.ops.linear.fla_backend import require_fla, set_fla_autotuning

    try:
        require_fla()
        set_fla_autotuning(mode)  # type: ignore[arg-type]
    except Exception as exc:
        return short(exc)
    return None


def randn(shape: tuple[int, ...], dtype: torch.dtype, run: Run, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(device=run.device, dtype=dtype)


# --------------------------------------------------------------------------------------------------------- check

def set_autotuning(run: Run, mode: str) -> None:
    if not run.dry:
        from attnlab.ops.linear.fla_backend import set_fla_autotuning

        set_fla_autotuning(mode)  # type: ignore[arg-type]


def phase_check(run: Run, D: int, dtype: torch.dtype, fla_missing: str | None, seen: set[tuple[str, int]],
                configs: str) -> None:
    """fla and the chunked form against the float64 recurrent form at (B, H, T=1000, D), one row each; ``configs``
    names fla's autotuning mode in force (recorded)."""
    from attnlab.ops.linear import linear_attention

    name = dtype_name(dtype)
    B, H, T = run.B, run.H, run.check_T
    base: dict[str, Any] = {"kind": "check", "dtype": name, "B": B, "H": H, "T": T, "D": D, "feature map": "elu1",
                            "tol": TOL[name], "fla configs": configs}
    if run.left() < 0:
        for impl in ("fla", "chunked"):
            run.row(**base, impl=impl, status="skipped: deadline")
        return
    try:
        gen = torch.Generator().manual_seed(1000 * D + len(name))
        xs = [randn((B, H, T, D), dtype, run, gen).requires_grad_(True) for _ in range(3)]
        go = randn((B, H, T, D), dtype, run, gen).double()  # rounded to dtype: both sides get the same seed
        xr = [x.detach().double().requires_grad_(True) for x in xs]
        ref, _ = linear_attention(*xr, impl="recurrent")
        want = (ref, *torch.autograd.grad(ref, xr, go))
    except Exception as exc:
        for impl in ("fla", "chunked"):
            run.row(**base, impl=impl, status="error in the reference: " + short(exc))
        return
    for impl in ("fla", "chunked"):
        row = dict(base, impl=impl)
        if impl == "fla" and fla_missing:
            run.row(**row, status="skipped: " + fla_missing)
            continue
        try:
            t0 = time.perf_counter()
            out, _ = linear_attention(*xs, impl=impl)
            got = (out, *torch.autograd.grad(out, xs, go.to(dtype)))
            sync(run)
            if impl == "fla" and (name, D) not in seen:
                seen.add((name, D))
                row["first call s (compile + autotune)"] = round(time.perf_counter() - t0, 2)
            errs = {n: rel_err(a, b) for n, a, b in zip(("out", *GRADS), got, want)}
            row |= {f"err {n}": e for n, e in errs.items()}
            finite = all(bool(torch.isfinite(t).all()) for t in got)
            ok = finite and max(errs.values()) <= TOL[name]
            row["status"] = "ok" if ok else "FAILED" + ("" if finite else " (non-finite values)")
        except Exception as exc:
            row["status"] = "error: " + short(exc)
        run.row(**row)


# --------------------------------------------------------------------------------------------------------- speed

def calls(method: str, D: int, T: int, run: Run) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(forward, forward+backward) closures of one method on fresh random inputs (B, H, T, D)."""
    from attnlab.ops.linear import linear_attention

    dtype = run.speed_dtype
    gen = torch.Generator().manual_seed(T + D)
    q, k, v = (randn((run.B, run.H, T, D), dtype, run, gen).requires_grad_(True) for _ in range(3))
    go = randn((run.B, run.H, T, D), dtype, run, gen)

    if method == "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def call() -> torch.Tensor:
            if run.sdpa_pinned:
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        def call() -> torch.Tensor:
            return linear_attention(q, k, v, feature_map="elu1", impl=method)[0]

    return step_pair(call, (q, k, v), go)


def phase_speed(run: Run, D: int, fla_missing: str | None) -> None:
    for T in run.lengths:
        for method in METHODS:
            row: dict[str, Any] = {"kind": "speed", "method": method, "D": D, "T": T, "B": run.B, "H": run.H,
                                   "dtype": dtype_name(run.speed_dtype)}
            if method == "fla" and fla_missing:
                run.row(**row, status="skipped: " + fla_missing)
                continue
            if run.left() < 0:
                run.row(**row, status="skipped: deadline")
                continue
            try:
                fwd, fb = calls(method, D, T, run)
                if method == "sdpa" and run.sdpa_pinned:
                    try:
                        fb()
                    except RuntimeError as exc:  # FlashAttention refused: time SDPA's own choice, say so
                        run.sdpa_pinned = False
                        row["sdpa note"] = "FlashAttention backend refused (" + short(exc) + "); SDPA's default"
                if method == "sdpa":
                    row["sdpa backend"] = "flash" if run.sdpa_pinned else "default"
                row["fwd ms"] = bench_ms(fwd, run)
                row["fwd+bwd ms"] = bench_ms(fb, run)
                row["fwd MiB"] = peak_mib(fwd, run)
                row["fwd+bwd MiB"] = peak_mib(fb, run)
                row["status"] = "ok"
            except Exception as exc:
                row["status"] = "error: " + short(exc)
            finally:
                if not run.dry:
                    torch.cuda.empty_cache()
            run.row(**row)


# -------------------------------------------------------------------------------------------------------- render

def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.2e}" if abs(v) < 1e-2 else f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return lines


def speed_table(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """One wide row per (D, T): each method's times and memory, fla/SDPA and fla/chunked (newest row wins)."""
    by: dict[tuple[int, int], dict[str, Any]] = {}
    for r in rows:
        w = by.setdefault((r["D"], r["T"]), {"D": r["D"], "T": r["T"], "dtype": r.get("dtype")})
        m = r["method"]
        for key in ("fwd ms", "fwd+bwd ms", "fwd MiB", "fwd+bwd MiB"):
            w[f"{m} {key}"] = r.get(key) if r.get("status") == "ok" else None
        w[f"{m} status"] = r.get("status")
    for w in by.values():
        for key in ("fwd", "fwd+bwd"):
            fla = w.get(f"fla {key} ms")
            for base in ("sdpa", "chunked"):
                b = w.get(f"{base} {key} ms")
                w[f"fla/{base} {key}"] = fla / b if fla and b else None
    tables: dict[int, list[dict[str, Any]]] = {}
    for (D, _), w in sorted(by.items()):
        tables.setdefault(D, []).append(w)
    return tables


def crossover(wide: list[dict[str, Any]], key: str) -> int | None:
    """The smallest measured T from which fla is faster than SDPA at every longer measured T; None if none."""
    pts = [(w["T"], w[f"fla/sdpa {key}"]) for w in wide if w.get(f"fla/sdpa {key}") is not None]
    best = None
    for T, ratio in sorted(pts, reverse=True):
        if ratio >= 1:
            break
        best = T
    return best


def crossover_line(wide: list[dict[str, Any]], key: str) -> str:
    if not any(w.get(f"fla/sdpa {key}") is not None for w in wide):
        return f"{key}: no fla and SDPA times to compare"
    c = crossover(wide, key)
    if c is None:
        return f"{key}: fla is not faster than SDPA at the longest measured T"
    return f"{key}: fla is faster than SDPA from T = {c} on (at every measured T >= {c})"


def render(out: Path) -> tuple[list[Path], list[str]]:
    """Markdown and CSV from the JSONL; returns the paths and the short speed summary to print."""
    rows = [json.loads(line) for line in (out / JSONL).read_text().splitlines() if line.strip()]
    env = [r for r in rows if r["kind"] == "env"]
    checks = [r for r in rows if r["kind"] == "check"]
    tables = speed_table([r for r in rows if r["kind"] == "speed"])
    e = env[-1] if env else {}
    where = e.get("gpu", "CPU dry run" if e.get("dry run") else "unknown device")
    md = [f"# flash-linear-attention as attnlab's `impl=\"fla\"` on CUDA ({where})", "",
          "Made by `benchmarks/gpu/linear_fla.py` (its docstring has the protocol).", ""]
    if e:
        md += [f"torch {e.get('torch')}, triton {e.get('triton')}, fla-core {e.get('fla-core')}, Python "
               f"{e.get('python')}" + (f", {e['gpu']} ({e['sms']} SMs, {e['memory_gib']} GiB, sm_{e['capability']})"
                                       if "gpu" in e else "") + f"; fla autotuning: {e.get('fla autotune')}", ""]
    md += ["## Correctness against the float64 recurrent form (relative Frobenius error)", ""]
    md += _table(checks, ["impl", "dtype", "D", "T", "err out", "err q", "err k", "err v", "tol", "fla configs",
                          "first call s (compile + autotune)", "status"]) + [""]
    summary: list[str] = []
    for D, wide in tables.items():
        fla_checks = [r for r in checks if r["impl"] == "fla" and r["D"] == D and r["dtype"] == wide[0]["dtype"]]
        head = [f"## Speed and memory, {wide[0]['dtype']}, D = {D}, B = 1, H = {rows_h(rows)} (ms: medians; MiB: "
                "peak of one call above its inputs)", ""]
        if not fla_checks or fla_checks[-1].get("status") != "ok":
            state = fla_checks[-1].get("status") if fla_checks else "not run"
            head += [f"**fla's {wide[0]['dtype']} check at D = {D}: {state}. Its times below are not results.**", ""]
        cols = ["T", "sdpa fwd ms", "chunked fwd ms", "fla fwd ms", "fla/sdpa fwd", "fla/chunked fwd",
                "sdpa fwd+bwd ms", "chunked fwd+bwd ms", "fla fwd+bwd ms", "fla/sdpa fwd+bwd", "fla/chunked fwd+bwd",
                "sdpa fwd+bwd MiB", "chunked fwd+bwd MiB", "fla fwd+bwd MiB"]
        tab = _table(wide, cols)
        cross = [crossover_line(wide, key) for key in ("fwd", "fwd+bwd")]
        errs = sorted({f"{m}: {w[f'{m} status']}" for w in wide for m in METHODS
                       if w.get(f"{m} status") not in (None, "ok")})
        md += head + tab + [""] + [f"- {c}" for c in cross] + [f"- {x}" for x in errs] + [""]
        summary += [f"D = {D}:"] + tab + cross + errs + [""]
    paths = [out / f"{STEM}.md", out / f"{STEM}.csv"]
    paths[0].write_text("\n".join(md) + "\n")
    wide_rows = [w for wide in tables.values() for w in wide]
    cols = sorted({k for w in wide_rows for k in w})
    with open(paths[1], "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(wide_rows)
    return paths, summary


def rows_h(rows: list[dict[str, Any]]) -> Any:
    hs = {r.get("H") for r in rows if r["kind"] == "speed"}
    return hs.pop() if len(hs) == 1 else sorted(hs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-seconds", type=float, default=120.0,
                    help="deadline of this invocation (cases after it are recorded as skipped)")
    ap.add_argument("--quick", action="store_true", help="D=64 and T in {1k, 4k, 16k} only")
    ap.add_argument("--dims", default="64,128", help="head dims, comma-separated (default 64,128)")
    ap.add_argument("--fla-autotune", choices=("small", "full", "single"), default="small",
                    help="fla's autotuning (attnlab.ops.linear.fla_backend.set_fla_autotuning)")
    ap.add_argument("--render", action="store_true", help="only rebuild the Markdown/CSV from the JSONL")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, SDPA and the chunked form only (tests)")
    a = ap.parse_args(argv)
    if not a.render:
        if not a.dry_run and not torch.cuda.is_available():
            print("linear_fla.py: needs a CUDA device (or --dry-run)", file=sys.stderr)
            return 2
        run = Run(a.out, a.max_seconds, a.dry_run, a.quick, tuple(int(d) for d in a.dims.split(",")))
        env_row(run, a.fla_autotune)
        fla_missing = setup_fla(run, a.fla_autotune)
        seen: set[tuple[str, int]] = set()
        mode = a.fla_autotune
        for D in run.dims:
            phase_check(run, D, run.speed_dtype if run.dry else torch.bfloat16, fla_missing, seen, mode)
            phase_speed(run, D, fla_missing)
            # float32 is checked, not timed: one launch configuration per kernel spares its autotuning (~10 s)
            if not fla_missing:
                set_autotuning(run, "single")
            phase_check(run, D, torch.bfloat16 if run.dry else torch.float32, fla_missing, seen, "single")
            if not fla_missing:
                set_autotuning(run, mode)
    paths, summary = render(a.out)
    for p in paths:
        print("wrote", p)
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
