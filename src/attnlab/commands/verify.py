"""``attnlab verify [NAME...]``: run the property checks over registered mechanisms; exit 1 on any failure, 2 (with
``attnlab: error: ...`` on stderr) for bad arguments such as an unknown mechanism or check."""

from __future__ import annotations

import argparse

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


def run(args: argparse.Namespace) -> int:
    from attnlab.verify import VerifyOptions, run_checks
    from attnlab.verify.report import RESULT_COLUMNS, Tally, result_rows

    try:
        opts = VerifyOptions(dtype=_DTYPES[args.dtype], device=args.device, batch_size=args.batch_size,
                             seq_len=args.seq_len, d_model=args.d_model, n_heads=args.n_heads, seed=args.seed)
        results = run_checks(args.names, opts, only=args.check, progress=not args.no_progress)
    except ValueError as exc:
        from attnlab.commands._config_args import fail

        return fail(str(exc))
    print(aligned(RESULT_COLUMNS, result_rows(results, failures_only=args.failures_only)))
    t = Tally.of(results)
    print(f"\n{t.cases} cases over {t.mechanisms} mechanisms: {t.passed} passed, {t.failed} failed"
          + (f", {t.skipped} skipped (could not run on this device: they verified nothing)" if t.skipped else ""))
    return 1 if t.failed or not t.passed else 0
