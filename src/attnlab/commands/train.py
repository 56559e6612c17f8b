"""``attnlab train``: train one model of any task (single process, or DDP under torchrun)."""

from __future__ import annotations

import argparse

HELP = "train a model (language model, translation, ...) from a preset, a TOML config and --set overrides"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from attnlab.commands._config_args import add_config_arguments

    add_config_arguments(p, compare=False)
    p.add_argument("--mechanism", help="attention mechanism of every layer of a language model "
                                       "(same as --set model.attention=NAME)")


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from attnlab.commands._config_args import config_from_args, fail, preset_name
    from attnlab.config import ConfigError
    from attnlab.train import distributed as ddp
    from pathlib import Path

    from attnlab.train.checkpoint import CheckpointError, latest_checkpoint
    from attnlab.train.outdir import OutputDirError, prepare_out_dir, run_lock
    from attnlab.compare.presets import run_preset
    from attnlab.train.trainer import NonFiniteError, Trainer

    name = preset_name(args, compare=False)
    try:
        cfg = config_from_args(args, run_preset(name))
        if args.mechanism:
            if cfg.task != "lm":
                raise ConfigError(f"--mechanism sets a language model's attention; this is a {cfg.task!r} run "
                                  "(use --set model.<key>=...)")
            cfg = cfg.replace(**{"model.attention": args.mechanism})
    except ConfigError as e:
        return fail(str(e))
    if args.print_config:
        from attnlab.commands._config_args import config_toml

        print(json.dumps(cfg.to_dict(), indent=1) if args.print_config == "json" else config_toml(cfg), end="\n")
        return 0
    out = args.out or f"runs/{name}"
    is_main = int(os.environ.get("RANK", "0")) == 0
    lock = run_lock(out)
    try:
        if is_main:
            lock.acquire()  # before --force may move the directory: not while another run uses it
            if args.resume and latest_checkpoint(out) is None and not (Path(out) / "result.json").exists():
                raise OutputDirError(f"--resume: {out} holds no checkpoint to continue; drop --resume to start a new "
                                     "run there")
            backup = prepare_out_dir(out, resume=args.resume, force=args.force)
            if backup is not None:
                print(f"moved the previous contents of {out} to {backup}")
        trainer = Trainer(cfg, out_dir=out, resume=args.resume)
    except (ConfigError, OutputDirError, CheckpointError, ValueError) as e:
        lock.release()
        return fail(str(e))
    if is_main:
        print(f"training {trainer.n_params:,} parameters ({trainer.task.describe()}) on {trainer.device}"
              f"{f' x {trainer.dist.world_size} ranks' if trainer.dist.enabled else ''}; output in {out}")
    try:
        trainer.fit()
    except (NonFiniteError, CheckpointError, OutputDirError) as e:  # e.g. a checkpoint that cannot be written
        return fail(str(e))
    except OSError as e:  # a metrics/result file that cannot be written (disk full, read-only, removed)
        newest = latest_checkpoint(out)
        where = f" {e.filename}" if e.filename else ""
        return fail(f"could not write{where} in {out}: {e.strerror or e}; "
                    + (f"the newest complete checkpoint {str(newest)!r} is intact (continue with --resume)"
                       if newest is not None else "no checkpoint was written yet"))
    finally:
        lock.release()
        ddp.shutdown(trainer.dist)
    return 0
