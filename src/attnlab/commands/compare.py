"""``attnlab compare``: train variants x seeds under one budget and write a leaderboard and report."""

from __future__ import annotations

import argparse

HELP = ("compare attention variants (mechanisms; cross-attention scores for translation): train each with each "
        "seed, write leaderboard (md/csv), plots and HTML")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from attnlab.commands._config_args import add_config_arguments

    add_config_arguments(p, compare=True)
    p.add_argument("--mechanisms", "--variants", dest="variants",
                   help="comma-separated variants of the task's compared key: registry names for language models, "
                        "cross-attention scores (scaled_dot, dot, general, additive) for translation "
                        "(default: the preset's)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the preset's)")
    p.add_argument("--baseline", help="variant the others are compared with (default: standard if compared, else "
                                      "the first)")


def run(args: argparse.Namespace) -> int:
    import time

    from attnlab.commands._config_args import (config_file_tables, config_from_args, csv_list, csv_seeds, fail,
                                               preset_name, print_or_run)
    from attnlab.compare import CompareConfig, get_compare_preset, run_compare
    from attnlab.config import ConfigError

    t0 = time.perf_counter()
    name = preset_name(args, compare=True)
    try:
        preset = get_compare_preset(name)
        file, table = config_file_tables(args, compare=True)
        base = config_from_args(args, preset.base, file=file)
        # flags <- the file's [compare] table <- the preset
        variants = csv_list(args.variants, "--mechanisms") if args.variants is not None \
            else list(table.get("variants", preset.variants))
        seeds = csv_seeds(args.seeds) if args.seeds is not None else list(table.get("seeds", preset.seeds))
        options = {k: v for k, v in {**preset.options, **table.get("options", {})}.items() if k in variants}
        baseline = args.baseline or table.get("baseline") or (preset.baseline if preset.baseline in variants else None)
        cfg = CompareConfig(base=base, variants=variants, seeds=seeds, options=options, baseline=baseline)
    except (ConfigError, ValueError) as e:
        return fail(str(e))
    out = args.out or f"runs/compare-{name}"
    return print_or_run(args, cfg, lambda: run_compare(cfg, out, resume=args.resume, force=args.force), t0)
