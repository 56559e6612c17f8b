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


def _csv(text: str, what: str) -> list[str]:
    from attnlab.config import ConfigError

    items = [x.strip() for x in text.split(",")]
    if not items or any(not x for x in items):
        raise ConfigError(f"{what} must be a comma-separated list of non-empty values, got {text!r}")
    return items


def run(args: argparse.Namespace) -> int:
    import json
    import time

    from attnlab.commands._config_args import config_from_args, fail, preset_name
    from attnlab.compare import CompareConfig, get_compare_preset, run_compare
    from attnlab.config import ConfigError
    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.outdir import OutputDirError
    from attnlab.train.trainer import NonFiniteError

    t0 = time.perf_counter()
    name = preset_name(args, compare=True)
    try:
        preset = get_compare_preset(name)
        base = config_from_args(args, preset.base)
        variants = _csv(args.variants, "--mechanisms") if args.variants is not None else preset.variants
        seeds = preset.seeds
        if args.seeds is not None:
            try:
                seeds = [int(s) for s in _csv(args.seeds, "--seeds")]
            except ValueError:
                raise ConfigError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
        options = {k: v for k, v in preset.options.items() if k in variants}
        cfg = CompareConfig(base=base, variants=variants, seeds=seeds, options=options,
                            baseline=args.baseline or (preset.baseline if preset.baseline in variants else None))
    except (ConfigError, ValueError) as e:
        return fail(str(e))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    out = args.out or f"runs/compare-{name}"
    try:
        res = run_compare(cfg, out, resume=args.resume, force=args.force)
    except (ConfigError, OutputDirError, CheckpointError, NonFiniteError) as e:
        return fail(str(e))
    print()
    print(res.files["leaderboard_md"].read_text())
    print(f"report: {res.files['html']}  (total {time.perf_counter() - t0:.0f} s)")
    return 0
