"""``attnlab bench [SUITE...]``: benchmarks (not timed tests) written as Markdown, CSV and PNG plots.

Results go to ``--out`` (default ``benchmarks/results``) as ``<suite>-<device>.md``/``.csv``/``*.png``, each with
the command line, date and machine. Existing results are never overwritten unless ``--force`` is given.
Exit status 1 when a case failed its correctness check or raised; 2 (with ``attnlab: error: ...`` on stderr) for
bad arguments or results that exist already without ``--force``.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from attnlab.bench import BenchOptions

HELP = "benchmark the mechanisms (time, memory, growth in T, ratios to raw SDPA); writes tables and plots"

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


def positive_ints(text: str) -> tuple[int, ...]:
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
    parser.add_argument("--lengths", type=positive_ints, default=None, help="comma-separated sequence lengths T")
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
    parser.add_argument("--min-time", type=float, default=1.0,
                        help="seconds of timing per case before repeats may stop (default 1; --quick uses 0.05)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--list", action="store_true", help="list the registered suites and exit")
    parser.add_argument("--no-progress", action="store_true")


def name_list(text: str | None) -> tuple[str, ...] | None:
    """``"a, b"`` -> ``("a", "b")``; ``None`` or nothing named -> ``None``."""
    names = tuple(m.strip() for m in text.split(",") if m.strip()) if text else ()
    return names or None


def command_line(suites: list[str], options: BenchOptions, out: str | Path, *, force: bool = False,
                 threads: int | None = None) -> str:
    """The exact, fully resolved command that reproduces this run."""
    o = options
    parts = ["attnlab", "bench", *suites, "--device", o.device, "--dtype", str(o.dtype).removeprefix("torch."),
             "--d-model", str(o.d_model), "--n-heads", str(o.n_heads), "--batch-size", str(o.batch_size),
             "--warmup", str(o.warmup), "--repeats", str(o.repeats), "--budget", f"{o.budget_s:g}",
             "--min-time", f"{o.min_time_s:g}"]
    if o.lengths:
        parts += ["--lengths", ",".join(map(str, o.lengths))]
    if o.quick:
        parts.append("--quick")
    if o.mechanisms:
        parts += ["--mechanisms", ",".join(o.mechanisms)]
    if threads:
        parts += ["--threads", str(threads)]
    parts += ["--out", str(out)]
    if force:
        parts.append("--force")
    return shlex.join(parts)


def run(args: argparse.Namespace) -> int:
    from attnlab.bench import BenchOptions, suites
    from attnlab.bench.core import default_device
    from attnlab.bench.runner import run_suites

    if args.list:
        for s in suites():
            print(f"{s.name:12s} {s.description}")
        return 0
    names = list(args.suites) or [s.name for s in suites()]
    try:
        options = BenchOptions(device=args.device or default_device(), dtype=_DTYPES[args.dtype],
                               lengths=args.lengths, quick=args.quick, warmup=args.warmup, repeats=args.repeats,
                               budget_s=args.budget, min_time_s=args.min_time,
                               mechanisms=name_list(args.mechanisms), d_model=args.d_model,
                               n_heads=args.n_heads, batch_size=args.batch_size, progress=not args.no_progress)
        cmd = command_line(names, options, args.out, force=args.force, threads=args.threads)
        status, _ = run_suites(names, options, args.out, command=cmd, force=args.force, threads=args.threads,
                               echo=print)
    except (ValueError, FileExistsError) as exc:
        from attnlab.commands._config_args import fail

        return fail(str(exc))
    return status
