"""``attnlab compare``: train mechanisms x seeds under one token budget and write a leaderboard and report."""

from __future__ import annotations

import argparse

HELP = "compare attention mechanisms: train each with each seed, write leaderboard (md/csv), plots and HTML"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from attnlab.train.cliargs import add_config_arguments

    add_config_arguments(p, default_preset="quick")
    p.add_argument("--mechanisms", help="comma-separated registry names (default: the preset's)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--baseline", help="mechanism the others are compared with (default: the first)")


def run(args: argparse.Namespace) -> int:
    import time
    from dataclasses import replace

    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.cliargs import config_from_args, fail
    from attnlab.train.compare import run_compare
    from attnlab.train.config import ConfigError
    from attnlab.train.outdir import OutputDirError
    from attnlab.train.presets import CompareConfig, get_compare_preset

    t0 = time.perf_counter()
    try:
        preset = get_compare_preset(args.preset or "quick")
        base = config_from_args(args, preset.base)
        mechanisms = [m.strip() for m in args.mechanisms.split(",")] if args.mechanisms else preset.mechanisms
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else preset.seeds
        options = {k: v for k, v in preset.options.items() if k in mechanisms}
        cfg = CompareConfig(base=base, mechanisms=mechanisms, seeds=seeds, options=options,
                            baseline=args.baseline or ("standard" if "standard" in mechanisms else None))
    except (ConfigError, ValueError) as e:
        return fail(str(e))
    out = args.out or f"runs/compare-{args.preset or 'quick'}"
    try:
        res = run_compare(cfg, out, resume=args.resume, force=args.force)
    except (ConfigError, OutputDirError, CheckpointError) as e:
        return fail(str(e))
    print()
    print(res.files["leaderboard_md"].read_text())
    print(f"report: {res.files['html']}  (total {time.perf_counter() - t0:.0f} s)")
    return 0
