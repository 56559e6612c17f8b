"""``attnlab bench [SUITE...]``: benchmarks (not timed tests) written as Markdown, CSV and PNG plots.

Results go to ``--out`` (default ``benchmarks/results``) as ``<suite>-<device>.md``/``.csv``/``*.png``, each with
the command line, date and machine. Existing results are never overwritten unless ``--force`` is given.
Exit status 1 when a case failed its correctness check or raised.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

HELP = "benchmark the mechanisms (time, memory, growth in T, ratios to raw SDPA); writes tables and plots"

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive ints, got {text!r}")
    return vals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suites", nargs="*", metavar="SUITE",
                        help="suites to run (default: mechanisms, overhead, sparsity and any plugin suites)")
    parser.add_argument("--out", default="benchmarks/results", help="output directory (default benchmarks/results)")
    parser.add_argument("--force", action="store_true", help="overwrite existing result files")
    parser.add_argument("--quick", action="store_true",
                        help="short run (the demo): small T unless --lengths is given; 1 warm-up call and at least "
                             "3 timed calls, replacing --warmup and --repeats")
    parser.add_argument("--lengths", type=_ints, default=None, help="comma-separated sequence lengths T")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")
    parser.add_argument("--mechanisms", default=None, help="comma-separated mechanism names (default: all)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing each case (default 2)")
    parser.add_argument("--repeats", type=int, default=7,
                        help="timed calls per case: at least this many and until 1 s of timing has passed (at most "
                             "200), stopping early (after at least 3) once a case has used its --budget (default 7)")
    parser.add_argument("--budget", type=float, default=15.0,
                        help="seconds of timing per case after which repeats stop early (default 15)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--list", action="store_true", help="list the registered suites and exit")
    parser.add_argument("--no-progress", action="store_true")


def command_line(args: argparse.Namespace, suites: list[str], device: str) -> str:
    """The exact, fully resolved command that reproduces this run."""
    parts = ["attnlab", "bench", *suites, "--device", device, "--dtype", args.dtype,
             "--d-model", str(args.d_model), "--n-heads", str(args.n_heads), "--batch-size", str(args.batch_size),
             "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--budget", f"{args.budget:g}"]
    if args.lengths:
        parts += ["--lengths", ",".join(map(str, args.lengths))]
    if args.quick:
        parts.append("--quick")
    if args.mechanisms:
        parts += ["--mechanisms", args.mechanisms]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    parts += ["--out", str(args.out)]
    if args.force:
        parts.append("--force")
    return shlex.join(parts)


def run_suites(args: argparse.Namespace, *, echo=print) -> tuple[int, list[Path]]:
    """Run the requested suites and write their reports; returns (exit status, written paths)."""
    from attnlab.bench import BenchOptions, get_suite, suites, write_results
    from attnlab.bench.report import output_paths

    names = list(args.suites) or [s.name for s in suites()]
    try:
        for n in names:
            get_suite(n)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        mechs = tuple(m.strip() for m in args.mechanisms.split(",") if m.strip()) if args.mechanisms else None
        if mechs:
            from attnlab.layers.registry import get

            for m in mechs:
                get(m)
        options = BenchOptions(device=device, dtype=_DTYPES[args.dtype], lengths=args.lengths, quick=args.quick,
                               warmup=args.warmup, repeats=args.repeats, budget_s=args.budget, mechanisms=mechs,
                               d_model=args.d_model, n_heads=args.n_heads, batch_size=args.batch_size,
                               progress=not args.no_progress)
    except ValueError as exc:
        echo(f"attnlab bench: {exc}")
        return 2, []
    out = Path(args.out)
    if not args.force:  # refuse before measuring anything
        clash = []  # the same files write_results refuses to replace: Markdown, CSV and the suite's plots
        for n in names:
            md, csv_path, stem = output_paths(n, device, out)
            clash += [p for p in (md, csv_path) if p.exists()] + sorted(out.glob(stem.name + "*.png"))
        if clash:
            echo(f"attnlab bench: {', '.join(map(str, clash))} already exist; pass --force or choose another --out")
            return 2, []
    if args.threads:
        torch.set_num_threads(args.threads)
    cmd = command_line(args, names, device)
    status, written = 0, []
    for n in names:
        echo(f"== {n} ({device}) ==")
        result = get_suite(n).run(options)
        paths = write_results(result, out, command=cmd, force=args.force)
        written += paths
        for f in result.failures:
            echo(f"  FAILED {f.get('mechanism', f.get('mask', f.get('case', '')))} T={f.get('T')}: {f['status']}")
        if result.failures:
            status = 1
        for p in paths:
            echo(f"  wrote {p}")
    return status, written


def run(args: argparse.Namespace) -> int:
    if args.list:
        from attnlab.bench import suites

        for s in suites():
            print(f"{s.name:12s} {s.description}")
        return 0
    status, _ = run_suites(args)
    return status


