"""``attnlab demo``: the tour that ``make demo`` runs (list, verify, masks and a short benchmark).

Each step is its own function, so that a later ``attnlab compare --preset quick`` can reuse or replace them.
Everything is written under a fresh directory ``--out/<timestamp>/``; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path

HELP = "a short tour: list mechanisms, verify them, render masks and run a quick benchmark"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/demo", help="parent of the fresh output directory (default out/demo)")
    parser.add_argument("--mechanisms", default=None, help="comma-separated mechanism names (default: all)")
    parser.add_argument("--mask-length", type=int, default=48, help="length of the mask pictures (default 48)")
    parser.add_argument("--bench-lengths", default="128,256", help="sequence lengths of the quick benchmark")
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


def step_verify(out: Path, names: list[str] | None, *, progress: bool) -> tuple[bool, Path]:
    from attnlab.commands.verify import format_results, run_checks
    from attnlab.verify import VerifyOptions

    print("\n## Verification (float64, CPU)\n")
    results = run_checks(names, VerifyOptions(), progress=progress)
    failed = [r for r in results if not r.passed and not r.skipped]
    skipped = [r for r in results if r.skipped]
    text = format_results(results)
    path = out / "verify.txt"
    path.write_text(text + "\n")
    print(format_results(failed) if failed else "(no case failed; full table in the file below)")
    print(f"{len(results)} cases: {len(results) - len(failed) - len(skipped)} passed, {len(failed)} failed"
          + (f", {len(skipped)} skipped (cannot run on this device)" if skipped else "") + f" -> {path}")
    return not failed, path


def step_masks(out: Path, length: int) -> list[Path]:
    from attnlab.masks.render import gallery

    print("\n## Masks\n")
    paths = gallery(length, out / "masks")
    print(f"{len(paths) - 1} mask pictures -> {paths[-1].parent} (gallery: {paths[-1]})")
    return paths


def step_bench(out: Path, mechanisms: str | None, lengths: str, *, progress: bool) -> tuple[bool, list[Path]]:
    from attnlab.cli import build_parser
    from attnlab.commands.bench import run_suites

    print("\n## Quick benchmark\n")
    argv = ["bench", "mechanisms", "--quick", "--device", "cpu", "--lengths", lengths, "--out", str(out / "bench")]
    if mechanisms:
        argv += ["--mechanisms", mechanisms]
    if not progress:
        argv.append("--no-progress")
    status, paths = run_suites(build_parser().parse_args(argv))
    return status == 0, paths


def run(args: argparse.Namespace) -> int:
    out = fresh_dir(args.out)
    names = [m.strip() for m in args.mechanisms.split(",")] if args.mechanisms else None
    progress = not args.no_progress
    step_list()
    ok_verify, verify_path = step_verify(out, names, progress=progress)
    mask_paths = [] if args.skip_masks else step_masks(out, args.mask_length)
    ok_bench, bench_paths = (True, []) if args.skip_bench else step_bench(out, args.mechanisms, args.bench_lengths,
                                                                          progress=progress)
    print("\n## Where everything went\n")
    print(f"verification table: {verify_path}")
    if mask_paths:
        print(f"mask gallery:       {mask_paths[-1]}")
    for p in bench_paths:
        print(f"benchmark:          {p}")
    return 0 if ok_verify and ok_bench else 1
