"""One run per output directory: a second run is refused at once naming the holder; a killed run's lock is taken
over; the first run's metrics and checkpoints stay intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnlab.train.outdir import OutputDirError, RunLock, run_lock

HOLD = """
import sys, time
from attnlab.train.outdir import run_lock
lock = run_lock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


def _hold(out: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_a_second_run_is_refused_and_a_killed_runs_lock_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        with pytest.raises(OutputDirError, match=rf"is in use by another attnlab run \(process {holder.pid} on .*"
                                                 r"started .*\); wait for it"):
            run_lock(out).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder was killed: its lock went with it, its info file stayed; the next run takes over and says so
    lock = run_lock(out).acquire()
    try:
        assert lock.took_over is not None and str(holder.pid) in lock.took_over
        assert json.loads(lock.info_path.read_text())["pid"] == os.getpid()
        again = RunLock(out).acquire()  # re-entrant within one process
        again.release()
        assert lock.info_path.exists()
    finally:
        lock.release()
    assert not lock.info_path.exists()


def test_concurrent_train_commands_one_refused_the_other_intact(tmp_path: Path) -> None:
    """Two `attnlab train` on one --out: the second exits 2 at once naming the holder; the first finishes and its
    metrics and checkpoint are those of one uninterrupted run."""
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question. " * 300)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "attnlab.cli", "train", "--preset", "shakespeare-char-cpu", "--out", str(out),
            "--set", f"data.source={text}", "--set", f"data.cache_dir={tmp_path / 'c'}", "--set", "model.n_layers=1",
            "--set", "model.d_model=16", "--set", "model.context_len=16", "--steps", "3000", "--batch-size", "4",
            "--set", "eval_interval=1000", "--set", "log_interval=100", "--set", "tensorboard=false", "--set", "threads=1", "--no-progress"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # 3,000 tiny steps (several seconds): the second command starts while the first holds the directory
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 60
    info = out.parent / f".{out.name}.lock.json"
    while not info.exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.05)
    second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    out1, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    if second.returncode != 2 or "in use by another attnlab run" not in second.stderr:
        pytest.fail(f"the second run was not refused: rc={second.returncode} {second.stderr[-500:]}")
    assert f"process {first.pid}" in second.stderr
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in recs if r["kind"] == "train"]
    assert steps == sorted(steps) and steps[-1] == 3000 and len(steps) == len(set(steps))
    assert (out / "ckpt-00003000").is_dir() and (out / "result.json").is_file()


def test_resume_without_a_checkpoint_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from attnlab.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["train", "--preset", "shakespeare-char-cpu", "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "--resume: " in capsys.readouterr().err
    assert not (tmp_path / ".empty.lock.json").exists()  # the refused command released the directory
