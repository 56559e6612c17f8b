"""Shared command-line plumbing for `attnlab train`, `compare` and `study`: task + preset + TOML + --set + flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from attnlab.config import ConfigError, load_toml, merge, parse_set
from attnlab.train.config import TrainConfig, config_from_dict, config_to_dict

__all__ = ["add_config_arguments", "config_from_args", "config_file_tables", "config_toml", "csv_list", "csv_seeds", "fail", "print_or_run", "load_checkpoint",
           "DEFAULT_PRESETS"]

#: The preset a task starts from when ``--preset`` is not given: (``attnlab train``, ``attnlab compare``).
DEFAULT_PRESETS: dict[str, tuple[str, str]] = {
    "lm": ("shakespeare-char-cpu", "quick"),
    "translation": ("multi30k-de-en", "multi30k-scores"),
    "forecast": ("etth1-quick", "forecast-quick"),
    "digits-vqa": ("digits-vqa", "digits-masks"),
    "stg": ("stg", "stg"),
    "arith-distractors": ("arith-distractors", "arith-distractors"),
    "discovery": ("discovery", "discovery"),
}


def add_config_arguments(p: argparse.ArgumentParser, *, compare: bool) -> None:
    from attnlab.compare.presets import COMPARE_PRESETS
    from attnlab.tasks import task_names
    from attnlab.train.presets import PRESETS

    p.add_argument("--task", choices=task_names(), default=None,
                   help="what to train (default: the preset's task; without --preset: lm). Each task has its own "
                        "default preset: " + ", ".join(f"{t} -> {DEFAULT_PRESETS[t][int(compare)]}"
                                                         for t in DEFAULT_PRESETS))
    p.add_argument("--preset", default=None,
                   help=f"named preset to start from; training presets: {', '.join(PRESETS)}; comparison presets: "
                        f"{', '.join(COMPARE_PRESETS)}")
    p.add_argument("--config", metavar="FILE.toml", help="TOML file merged over the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set model.n_layers=2 --set optim.lr=3e-4 (repeatable)")
    p.add_argument("--steps", type=int, help="optimizer steps (same as --set steps=N)")
    p.add_argument("--batch-size", type=int, help="global rows (sequences, sentence pairs) per step")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", nargs="?", const="toml", choices=["toml", "json"], default=None,
                   help="print the resolved config and exit: TOML (default; --config reads it back"
                        + (", the comparison's own keys in a [compare] table" if compare else "") + ") or json")
    p.add_argument("--out", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue the results already in --out")
    p.add_argument("--force", action="store_true",
                   help="move an --out that already holds results aside (to <out>.old-<timestamp>) and start again")


def preset_name(args: argparse.Namespace, *, compare: bool) -> str:
    """``--preset``, else the default preset of ``--task``, else of the ``task`` a ``--config`` file names (so a
    file written by ``--print-config`` is merged over its own task's preset), else of ``lm``."""
    if args.preset:
        return args.preset
    task = args.task
    if task is None and getattr(args, "config", None):
        named = load_toml(args.config).get("task")
        task = named if isinstance(named, str) and named in DEFAULT_PRESETS else None
    return DEFAULT_PRESETS[task or "lm"][int(compare)]


def config_file_tables(args: argparse.Namespace, *, compare: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(run tables, [compare] table)`` of ``--config`` (both empty without one); a ``[compare]`` table is only
    read by ``attnlab compare`` (elsewhere it is an unknown key, named)."""
    if not getattr(args, "config", None):
        return {}, {}
    d = load_toml(args.config)
    if not compare:
        return d, {}
    table = d.pop("compare", {})
    if not isinstance(table, dict):
        raise ConfigError(f"compare: expected a table ([compare]), got {table!r}")
    unknown = sorted(set(table) - {"variants", "seeds", "baseline", "options"})
    if unknown:
        raise ConfigError(f"compare.{unknown[0]}: unknown key; the [compare] table takes variants, seeds, baseline, "
                          "options")
    return d, table


def config_from_args(args: argparse.Namespace, base: TrainConfig, *, file: dict[str, Any] | None = None) -> TrainConfig:
    """``base`` (from a preset) <- ``--config`` TOML (``file``: its run tables, already read) <- ``--set`` <-
    explicit flags; ``--task`` must match."""
    d: dict[str, Any] = config_to_dict(base)
    if file is None:
        file, _ = config_file_tables(args)
    if file:
        d = merge(d, file)
    overrides = parse_set(args.overrides)
    for flag, key in (("steps", "steps"), ("batch_size", "batch_size"), ("device", "device"), ("compile", "compile")):
        v = getattr(args, flag, None)
        if v is not None:
            overrides[key] = v
    if getattr(args, "no_progress", False):
        overrides["progress"] = False
    from attnlab.config import set_dotted

    for k, v in overrides.items():
        set_dotted(d, k, v)
    cfg = config_from_dict(d)
    if args.task is not None and cfg.task != args.task:
        raise ConfigError(f"--task {args.task} but the preset/config is a {cfg.task!r} run; pick a {args.task} "
                          f"preset (default: {DEFAULT_PRESETS[args.task][0]}) or drop --task")
    return cfg


def load_checkpoint(path: str, *, device: str, task: str) -> Any:
    """``attnlab.train.loading.load_trained`` for a command that needs a ``task`` model; returns the loaded run, or
    the exit status 2 after printing the error (naming the command to use for a checkpoint of another task)."""
    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.loading import load_trained

    commands = {"lm": "attnlab generate", "translation": "attnlab translate", "forecast": "attnlab forecast"}
    try:
        return load_trained(path, device=device, task=task)
    except (CheckpointError, ValueError) as e:
        other = next((c for t, c in commands.items() if t != task and f"is a {t!r} model" in str(e)), None)
        return fail(str(e) + (f"; use `{other}` for that checkpoint" if other else ""))


def csv_list(text: str, what: str) -> list[str]:
    """The items of a comma-separated flag value such as ``--mechanisms a,b``; ``what`` names the flag in the error."""
    items = [x.strip() for x in text.split(",")]
    if not items or any(not x for x in items):
        raise ConfigError(f"{what} must be a comma-separated list of non-empty values, got {text!r}")
    return items


def csv_seeds(text: str) -> list[int]:
    """The seeds of ``--seeds 0,1,2``."""
    try:
        return [int(s) for s in csv_list(text, "--seeds")]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None


def print_or_run(args: argparse.Namespace, cfg: Any, run: Callable[[], Any], t0: float) -> int:
    """The end of ``attnlab compare`` and ``attnlab study``: print ``cfg`` as JSON with ``--print-config``, else
    ``run()`` it and print its leaderboard and report path; a known error becomes a message and exit status 2."""
    import json
    import time

    from attnlab.train.checkpoint import CheckpointError
    from attnlab.train.outdir import OutputDirError
    from attnlab.train.trainer import NonFiniteError

    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=1) if args.print_config == "json" else config_toml(cfg), end="\n")
        return 0
    try:
        res = run()
    except (ConfigError, OutputDirError, CheckpointError, NonFiniteError) as e:
        return fail(str(e))
    print()
    print(res.files["leaderboard_md"].read_text())
    print(f"report: {res.files['html']}  (total {time.perf_counter() - t0:.0f} s)")
    return 0


def config_toml(cfg: Any) -> str:
    """TOML of a run config (:class:`TrainConfig`) or a comparison (the base run's tables plus a ``[compare]``
    table of variants, seeds, baseline and options) that ``--config`` reads back; other configs (a study) print
    their plain values as TOML."""
    from attnlab.compare.config import CompareConfig
    from attnlab.config import dump_toml

    if isinstance(cfg, TrainConfig):
        return dump_toml(config_to_dict(cfg))
    if isinstance(cfg, CompareConfig):
        d = config_to_dict(cfg.base)
        d["compare"] = {"variants": cfg.variants, "seeds": cfg.seeds, "baseline": cfg.baseline, "options": cfg.options}
        return dump_toml(d)
    return dump_toml(cfg.to_dict())


def fail(msg: str) -> int:
    print(f"attnlab: error: {msg}", file=sys.stderr)
    return 2
