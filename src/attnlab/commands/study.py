"""``attnlab study deconstructing``: the resumable reproduction study of "Deconstructing Attention" (spec 12)."""

from __future__ import annotations

import argparse

HELP = ("run a paper's study as one resumable grid of training runs and write its leaderboard and report "
        "(deconstructing: Standard + six variants x {uniform, hybrid} x seeds, SKIP, the spec 12.3 table)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", choices=["deconstructing"], help="which study")
    p.add_argument("--preset", default="quick", help="quick (smoke, <= 10 min on 2 cores), full (WikiText-2, "
                                                     "8 layers, 3 seeds, <= 2.5 h) or tiny (seconds, for tests)")
    p.add_argument("--corpus", help="tinyshakespeare (characters), wikitext2 (words) or a text file "
                                    "(default: the preset's)")
    p.add_argument("--layouts", choices=["main", "all"], default="main",
                   help="all: also the nine-layout ablation of RndEmbQK and Non-approximate; on the --out of a "
                        "finished main study it keeps those runs and trains only the ablation")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--variants", help="comma-separated subset of the six variants (default: all)")
    p.add_argument("--out", help="output directory (default: runs/study-deconstructing-<preset>); running the same "
                                 "study again resumes it")
    p.add_argument("--force", action="store_true", help="move an existing directory aside and start again")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, each in its own process with the preset's threads divided among them "
                        "(default 1; on 2 cores, --jobs 2 runs two one-thread runs side by side)")
    p.add_argument("--print-config", action="store_true", help="print the study as JSON and exit")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from attnlab.commands._config_args import csv_list, csv_seeds, fail, print_or_run
    from attnlab.config import ConfigError
    from attnlab.study import get_study_preset, run_study

    t0 = time.perf_counter()
    try:
        cfg = get_study_preset(args.preset, args.corpus)
        changes: dict = {"layouts": args.layouts}
        if args.seeds is not None:
            changes["seeds"] = csv_seeds(args.seeds)
        if args.variants is not None:
            changes["variants"] = csv_list(args.variants, "--variants")
        cfg = dataclasses.replace(cfg, **changes)
    except (ConfigError, ValueError) as e:
        return fail(str(e))
    out = args.out or f"runs/study-deconstructing-{args.preset}"
    return print_or_run(args, cfg, lambda: run_study(cfg, out, force=args.force, jobs=args.jobs), t0)
