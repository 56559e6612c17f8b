"""Shared command-line plumbing for ``attnlab train`` and ``attnlab compare``: preset + TOML + --set + flags."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from attnlab.train.config import (
    ConfigError,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    parse_set,
)

__all__ = ["add_config_arguments", "config_from_args", "merge"]


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``extra`` into a copy of ``base`` (tables merge, values replace)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "attention_options":
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def add_config_arguments(p: argparse.ArgumentParser, *, default_preset: str | None) -> None:
    from attnlab.train.presets import COMPARE_PRESETS, PRESETS

    p.add_argument("--preset", default=default_preset,
                   help=f"named preset to start from (default: {default_preset}); training presets: "
                        f"{', '.join(PRESETS)}; comparison presets: {', '.join(COMPARE_PRESETS)}")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file merged over the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set model.n_layers=2 --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--steps", type=int, help="optimizer steps (same as --set steps=N)")
    p.add_argument("--batch-size", type=int, help="global sequences per step")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the results already in --out")
    p.add_argument("--force", action="store_true",
                   help="move an --out that already holds results aside (to <out>.old-<timestamp>) and start again")


def config_from_args(args: argparse.Namespace, base: TrainConfig) -> TrainConfig:
    """``base`` (from a preset) <- ``--config`` TOML <- ``--set`` <- explicit flags."""
    d = config_to_dict(base)
    if args.config:
        import tomllib

        try:
            with open(args.config, "rb") as f:
                d = merge(d, tomllib.load(f))
        except FileNotFoundError:
            raise ConfigError(f"config file {args.config!r} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {args.config!r} is not valid TOML: {e}") from None
    cfg = config_from_dict(d)
    overrides = parse_set(args.overrides)
    for flag, key in (("steps", "steps"), ("batch_size", "batch_size"), ("device", "device"), ("compile", "compile")):
        v = getattr(args, flag, None)
        if v is not None:
            overrides[key] = v
    if getattr(args, "no_progress", False):
        overrides["progress"] = False
    return apply_overrides(cfg, overrides) if overrides else cfg


def fail(msg: str) -> int:
    print(f"attnlab: error: {msg}", file=sys.stderr)
    return 2
