"""``attnlab demo``: the tour that ``make demo`` runs (list, verify, masks and a short benchmark).

Each step is its own function, so that a later ``attnlab compare --preset quick`` can reuse or replace them.
Everything is written under a fresh directory ``--out/<timestamp>/``; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path

from attnlab.commands._table import aligned
from attnlab.commands.bench import name_list, positive_ints

HELP = "a short tour: list mechanisms, verify them, render masks and run a quick benchmark"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="parent of the fresh output directory (default out/demo)")
    parser.add_argument("--mechanisms", default=None, help="comma-separated mechanism names (default: all)")
    parser.add_argument("--mask-length", type=int, default=48, help="length of the mask pictures (default 48)")
    parser.add_argument("--bench-lengths", type=positive_ints, default=(128, 256),
                        help="comma-separated sequence lengths of the quick benchmark (default 128,256)")
    parser.add_argument("--skip-bench", action="store_true", help="leave out the benchmark step")
    parser.add_argument("--skip-masks", action="store_true", help="leave out the mask pictures")
    parser.add_argument("--no-progress", action="store_true")


def fresh_dir(parent: str | Path) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(parent) / stamp
    n = 1
    while out.exists():
        out = Path(parent) / f"{stamp}-{n}"
        n += 1
    out.mkdir(parents=True)
    return out


def step_list() -> None:
    from attnlab.commands.list import table

    print("## Mechanisms\n")
    print(table())


def step_verify(out: Path, names: tuple[str, ...] | None, *, progress: bool) -> tuple[bool, Path]:
    from attnlab.verify import VerifyOptions, run_checks
    from attnlab.verify.report import RESULT_COLUMNS, Tally, result_rows

    print("\n## Verification (float64, CPU)\n")
    results = run_checks(names, VerifyOptions(), progress=progress)
    t = Tally.of(results)
    path = out / "verify.txt"
    path.write_text(aligned(RESULT_COLUMNS, result_rows(results)) + "\n")
    print(aligned(RESULT_COLUMNS, result_rows(results, failures_only=True)) if t.failed
          else "(no case failed; full table in the file below)")
    print(f"{t.cases} cases: {t.passed} passed, {t.failed} failed"
          + (f", {t.skipped} skipped (cannot run on this device)" if t.skipped else "") + f" -> {path}")
    return not t.failed, path


def step_masks(out: Path, length: int) -> list[Path]:
    from attnlab.masks.render import gallery

    print("\n## Masks\n")
    paths = gallery(length, out / "masks")
    print(f"{len(paths) - 1} mask pictures -> {paths[-1].parent} (gallery: {paths[-1]})")
    return paths


def step_bench(out: Path, mechanisms: tuple[str, ...] | None, lengths: tuple[int, ...], *,
               progress: bool) -> tuple[bool, list[Path]]:
    from attnlab.bench import BenchOptions
    from attnlab.bench.runner import run_suites
    from attnlab.commands.bench import command_line

    print("\n## Quick benchmark\n")
    options = BenchOptions(device="cpu", lengths=lengths, quick=True, mechanisms=mechanisms, progress=progress)
    cmd = command_line(["mechanisms"], options, out / "bench")
    status, paths = run_suites(["mechanisms"], options, out / "bench", command=cmd, echo=print)
    return status == 0, paths


def run(args: argparse.Namespace) -> int:
    from attnlab.layers.registry import MECHANISMS

    names = name_list(args.mechanisms)
    progress = not args.no_progress
    try:
        MECHANISMS.get_all(names or ())  # unknown names are refused before the tour starts
    except ValueError as exc:
        print(f"attnlab demo: {exc}")
        return 2
    out = fresh_dir(args.out)
    step_list()
    ok_verify, verify_path = step_verify(out, names, progress=progress)
    mask_paths = [] if args.skip_masks else step_masks(out, args.mask_length)
    ok_bench, bench_paths = (True, []) if args.skip_bench else step_bench(out, names, args.bench_lengths,
                                                                          progress=progress)
    print("\n## Where everything went\n")
    print(f"verification table: {verify_path}")
    if mask_paths:
        print(f"mask gallery:       {mask_paths[-1]}")
    for p in bench_paths:
        print(f"benchmark:          {p}")
    return 0 if ok_verify and ok_bench else 1
