"""``attnlab train``: train one language model (single process, or DDP under torchrun)."""

from __future__ import annotations

import argparse

HELP = "train a language model from a preset, a TOML config and --set overrides (DDP under torchrun)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from attnlab.train.cliargs import add_config_arguments

    add_config_arguments(p, default_preset="shakespeare-char-cpu")
    p.add_argument("--mechanism", help="attention mechanism of every layer (same as --set model.attention=NAME)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from attnlab.train import distributed as ddp
    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.cliargs import config_from_args, fail
    from attnlab.train.config import ConfigError
    from attnlab.train.outdir import OutputDirError, prepare_out_dir
    from attnlab.train.presets import get_preset
    from attnlab.train.trainer import Trainer

    try:
        cfg = config_from_args(args, get_preset(args.preset) if args.preset else get_preset("shakespeare-char-cpu"))
        if args.mechanism:
            cfg = cfg.replace(**{"model.attention": args.mechanism})
    except ConfigError as e:
        return fail(str(e))
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1))
        return 0
    out = args.out or f"runs/{args.preset or 'train'}"
    is_main = int(os.environ.get("RANK", "0")) == 0
    try:
        if is_main:
            backup = prepare_out_dir(out, resume=args.resume, force=args.force)
            if backup is not None:
                print(f"moved the previous contents of {out} to {backup}")
        trainer = Trainer(cfg, out_dir=out, resume=args.resume)
    except (ConfigError, OutputDirError, CheckpointError, ValueError) as e:
        return fail(str(e))
    if is_main:
        print(f"training {trainer.n_params:,} parameters ({cfg.model.attention}) on {trainer.device}"
              f"{f' x {trainer.dist.world_size} ranks' if trainer.dist.enabled else ''}; output in {out}")
    try:
        trainer.fit()
    finally:
        ddp.shutdown(trainer.dist)
    return 0
