"""Protecting output directories: never overwrite results silently, never delete them, one run at a time."""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from attnlab._io import atomic_write_text

__all__ = ["prepare_out_dir", "refuse_used_out_dir", "OutputDirError", "RunLock", "run_lock", "atomic_write_text"]


class OutputDirError(ValueError):
    """An output directory that already holds results, or that another run is using."""


class RunLock:
    """An exclusive lock that makes one output directory belong to one run (process) at a time.

    The lock is a ``filelock`` lock on the hidden sibling file ``.<name>.lock`` (a sibling, so that ``--force``
    can move the directory aside while the lock stays put), with the holder's process id, host and start time in
    ``.<name>.lock.json``. The operating system drops the lock when its process ends, however it ends, so a killed
    run leaves no stale lock: the next run takes it over (and says so). Within one process the lock is re-entrant
    (the CLI takes it before preparing the directory, the trainer again for the run).
    """

    _held: dict[str, list[Any]] = {}  # resolved path -> [FileLock, count], this process's locks

    def __init__(self, out_dir: str | Path) -> None:
        out = Path(out_dir).resolve()
        self.path = out.with_name(f".{out.name}.lock")
        self.info_path = out.with_name(f".{out.name}.lock.json")
        self.out = out
        self.took_over: str | None = None  # the holder a killed run left behind, when this run took its lock

    def acquire(self) -> "RunLock":
        from filelock import FileLock, Timeout

        key = str(self.path)
        if key in RunLock._held:
            RunLock._held[key][1] += 1
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise OutputDirError(
                f"output directory {str(self.out)!r} is in use by another attnlab run ({self._holder()}); wait for "
                "it to finish or use another --out") from None
        stale = self._holder() if self.info_path.exists() else None
        atomic_write_text(self.info_path, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}))
        RunLock._held[key] = [lock, 1]
        self.took_over = stale
        return self

    def release(self) -> None:
        key = str(self.path)
        held = RunLock._held.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del RunLock._held[key]
            self.info_path.unlink(missing_ok=True)
            held[0].release()

    def _holder(self) -> str:
        try:
            d = json.loads(self.info_path.read_text())
            return f"process {d['pid']} on {d['host']}, started {d['started']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def run_lock(out_dir: str | Path) -> RunLock:
    """``RunLock(out_dir)``: use as ``with run_lock(out): ...`` or ``acquire()``/``release()``."""
    return RunLock(out_dir)


def refuse_used_out_dir(out: Path) -> None:
    """Without ``resume``, a directory holding a run's results (checkpoints, metrics, ``result.json``) is an error:
    training into it would replace its checkpoints and mix two runs' metrics."""
    from attnlab.train.checkpoint import CHECKPOINT_PREFIX

    if not out.is_dir():
        return
    found = sorted(p.name for p in out.iterdir()
                   if p.name.startswith(CHECKPOINT_PREFIX) or p.name in ("metrics.jsonl", "metrics.csv", "result.json"))
    if found:
        raise OutputDirError(
            f"output directory {str(out)!r} already holds results ({', '.join(found[:4])}"
            f"{', ...' if len(found) > 4 else ''}); pass resume=True (--resume) to continue them, or use another "
            "directory (--force moves it aside)"
        )


def prepare_out_dir(out_dir: str | Path, *, resume: bool = False, force: bool = False) -> Path | None:
    """Make ``out_dir`` ready for a run.

    * empty or missing: created;
    * holding files and ``resume``: used as is (the caller continues what is there);
    * holding files and ``force``: the old directory is *renamed* to ``<out_dir>.old-<timestamp>`` (nothing is
      deleted) and a fresh one created; returns the backup path;
    * holding files otherwise: :class:`OutputDirError`.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputDirError(f"output path {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if resume:
            return None
        if force:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            backup = out.with_name(f"{out.name}.old-{stamp}")
            n = 1
            while backup.exists():
                backup = out.with_name(f"{out.name}.old-{stamp}-{n}")
                n += 1
            os.replace(out, backup)
            out.mkdir(parents=True)
            return backup
        raise OutputDirError(
            f"output directory {str(out)!r} already holds results; pass --resume to continue them or --force to "
            "move them aside (to <dir>.old-<timestamp>) and start again"
        )
    out.mkdir(parents=True, exist_ok=True)
    return None
