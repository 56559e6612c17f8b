"""Fault test: a run killed (SIGKILL) in the middle of writing a checkpoint resumes to the same result.

A child process trains a tiny character LM with a checkpoint every 2 steps and kills itself while writing one
checkpoint: after the first of its files (the weights) is half written, or just before the finished temporary
directory is renamed into place. ``--resume`` must then continue from the last complete checkpoint, and the
finished run must equal an uninterrupted one bit for bit (weights) and record for record (metrics).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnlab.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"

CHILD = r"""
import os, signal, sys
import attnlab.train.checkpoint as ck

mode, kill_at = sys.argv[1], int(sys.argv[2])
calls = {"save": 0, "rename": 0}
real_save_model, real_replace = ck.save_model, os.replace

def save_model(model, filename, *a, **k):
    calls["save"] += 1
    if mode == "half-file" and calls["save"] == kill_at:
        real_save_model(model, filename, *a, **k)
        size = os.path.getsize(filename)
        with open(filename, "r+b") as f:
            f.truncate(size // 2)          # the weights file is half written when the process dies
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save_model(model, filename, *a, **k)

def replace(src, dst, *a, **k):
    if mode == "before-rename" and os.path.basename(str(src)).startswith(".tmp-"):
        calls["rename"] += 1
        if calls["rename"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)   # every file written, the directory not yet renamed
    return real_replace(src, dst, *a, **k)

ck.save_model = save_model
ck.os.replace = replace
from attnlab.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _argv(text: Path, cache: Path, out: Path) -> list[str]:
    return ["train", "--preset", "shakespeare-char-cpu", "--out", str(out), "--set", f"data.source={text}",
            "--set", f"data.cache_dir={cache}", "--set", "model.n_layers=1", "--set", "model.d_model=16",
            "--set", "model.n_heads=2", "--set", "model.context_len=16", "--set", "eval_interval=4",
            "--set", "checkpoint_interval=2", "--set", "keep_checkpoints=2", "--set", "tensorboard=false",
            "--set", "model.dropout=0.1", "--steps", "8", "--batch-size", "4",
            "--no-progress"]


def _records(run: Path) -> list[dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in recs:  # wall-clock fields differ between any two runs
        for k in ("elapsed_s", "tokens_per_s", "wall_s", "time"):
            r.pop(k, None)
    return recs


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from attnlab.data import read_bundled_text

    tmp = tmp_path_factory.mktemp("kill")
    text = tmp / "small.txt"
    text.write_text(read_bundled_text("tinyshakespeare")[:6000])
    ref = tmp / "uninterrupted"
    assert main(_argv(text, tmp / "cache", ref)) == 0
    return tmp, text, ref


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
@pytest.mark.parametrize("mode, kill_at", [("half-file", 2), ("before-rename", 3)])
def test_killed_while_writing_a_checkpoint_resumes_exactly(setup: tuple[Path, Path, Path], mode: str,
                                                           kill_at: int) -> None:
    tmp, text, ref = setup
    out = tmp / f"killed-{mode}"
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", CHILD, mode, str(kill_at), *_argv(text, tmp / "cache", out)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    done = sorted(p.name for p in out.glob("ckpt-*"))
    # the checkpoint being written when the process died is not among the complete ones
    assert done == [f"ckpt-{2 * i:08d}" for i in range(1, kill_at)][-2:]  # keep_checkpoints=2
    assert list(out.glob(".tmp-*")), "the interrupted checkpoint's temporary directory should be left behind"

    assert main(_argv(text, tmp / "cache", out) + ["--resume"]) == 0
    assert not list(out.glob(".tmp-*")), "the next save removes the interrupted temporary directory"
    a = load_file(str(out / "ckpt-00000008" / "model.safetensors"))
    b = load_file(str(ref / "ckpt-00000008" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _records(out) == _records(ref)
    res_a, res_b = (json.loads((d / "result.json").read_text()) for d in (out, ref))
    assert res_a["steps"] == res_b["steps"] == 8 and res_a["tokens"] == res_b["tokens"]
    assert res_a["val"] == res_b["val"] and res_a["resumed_from"]
