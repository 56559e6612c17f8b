"""A real (tiny) language-model run for the checkpoint tests: trained once per test module through the CLI, copied
per test (the damage tests break their copy).

``build_run(root)`` trains 2 steps of a 1-layer, d_model=16 character LM on 3,000 characters of Tiny Shakespeare
into ``root/master`` (one checkpoint, ``ckpt-00000002``); ``train_args(root)`` are the ``attnlab train`` arguments
of that run, so that ``--resume`` with them continues it.
"""

from __future__ import annotations

import json
from pathlib import Path

CKPT = "ckpt-00000002"


def text_file(root: Path) -> Path:
    from attnlab.data import read_bundled_text

    p = root / "small.txt"
    if not p.exists():
        root.mkdir(parents=True, exist_ok=True)
        p.write_text(read_bundled_text("tinyshakespeare")[:3000])
    return p


def train_args(root: Path, out: Path, *, steps: int = 2) -> list[str]:
    return ["train", "--preset", "shakespeare-char-cpu", "--out", str(out), "--no-progress", "--device", "cpu",
            "--set", f"data.source={text_file(root)}", "--set", f"data.cache_dir={root / 'cache'}",
            "--set", "model.n_layers=1", "--set", "model.d_model=16", "--set", "model.n_heads=2",
            "--set", "model.context_len=16", "--set", "eval_interval=2", "--set", "tensorboard=false",
            "--set", "threads=1", "--steps", str(steps), "--batch-size", "2"]


def build_run(root: Path) -> Path:
    from attnlab.cli import main

    out = root / "master"
    assert main(train_args(root, out)) == 0
    assert (out / CKPT / "model.safetensors").is_file()
    return out


def saved_config(run: Path, **changes):
    """The run config stored in ``run``'s checkpoint (for a Python-API resume), with ``changes``."""
    from attnlab.train.config import config_from_dict

    cfg = config_from_dict(json.loads((run / CKPT / "state.json").read_text())["config"])
    return cfg.replace(**changes) if changes else cfg
