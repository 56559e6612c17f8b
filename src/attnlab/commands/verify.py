"""``attnlab verify [NAME...]``: run the property checks over registered mechanisms; exit 1 on any failure."""

from __future__ import annotations

import argparse
import math
import sys

import torch

from attnlab.commands._table import aligned

HELP = "run the property checks over the registered mechanisms (exit status 1 on any failure)"

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="mechanisms to check (default: all registered)")
    parser.add_argument("--check", action="append", metavar="CHECK", help="run only this check (repeatable)")
    parser.add_argument("--seq-len", type=int, default=13, help="sequence length T (default 13)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=24)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--failures-only", action="store_true", help="print only failed cases")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2e}"


def format_results(results: list, *, failures_only: bool = False) -> str:
    """The results as an aligned table: check, mechanism, case, max error, tolerance, result, detail."""
    from attnlab.verify.generic import is_skipped

    rows = []
    for r in results:
        if failures_only and (r.passed or r.skipped):
            continue
        verdict = "skip" if is_skipped(r) else ("pass" if r.passed else "FAIL")
        tol = f">= {_fmt(r.tolerance)}" if r.check == "sees-future" else _fmt(r.tolerance)
        rows.append([r.check, r.mechanism, r.case, _fmt(r.max_error), tol, verdict, r.detail])
    return aligned(["check", "mechanism", "case", "max error", "tolerance", "result", "detail"], rows)


def run_checks(names: list[str] | None, options, *, only: list[str] | None = None, progress: bool = True) -> list:
    """Every applicable check over the named (default: all) mechanisms; raises ValueError on unknown names."""
    from attnlab.layers.registry import all_specs, get
    from attnlab.verify import applicable, checks, run_check

    specs = [get(n) for n in names] if names else all_specs()
    if only:
        known = {c.name for c in checks()}
        bad = [c for c in only if c not in known]
        if bad:
            raise ValueError(f"unknown check(s) {bad}; registered: {', '.join(sorted(known))}")
    pairs = [(c, s) for s in specs for c in applicable(s) if not only or c.name in only]
    it = pairs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(pairs, desc="verify", file=sys.stderr, leave=False)
    results = []
    for c, s in it:
        results.extend(run_check(c, s, options))
    return results


def run(args: argparse.Namespace) -> int:
    from attnlab.verify import VerifyOptions

    try:
        opts = VerifyOptions(dtype=_DTYPES[args.dtype], device=args.device, batch_size=args.batch_size,
                             seq_len=args.seq_len, d_model=args.d_model, n_heads=args.n_heads, seed=args.seed)
        results = run_checks(args.names, opts, only=args.check, progress=not args.no_progress)
    except ValueError as exc:
        print(f"attnlab verify: {exc}", file=sys.stderr)
        return 2
    print(format_results(results, failures_only=args.failures_only))
    skipped = [r for r in results if r.skipped]
    failed = [r for r in results if not r.passed and not r.skipped]
    passed = len(results) - len(failed) - len(skipped)
    mechs = {r.mechanism for r in results}
    print(f"\n{len(results)} cases over {len(mechs)} mechanisms: {passed} passed, {len(failed)} failed"
          + (f", {len(skipped)} skipped (could not run on this device: they verified nothing)" if skipped else ""))
    return 1 if failed or not passed else 0
