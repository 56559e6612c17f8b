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

__all__ = ["prepare_out_dir", "refuse_used_out_dir", "attnlab_results", "make_out_dir", "OutputDirError", "RunLock",
           "run_lock", "atomic_write_text"]


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
        problem = _out_dir_problem(self.out)
        if problem:  # a file where the directory (or one above it) should be
            raise OutputDirError(problem)
        make_out_dir(self.path.parent)
        lock = FileLock(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise OutputDirError(
                f"output directory {str(self.out)!r} is in use by another attnlab run ({self._holder()}); wait for "
                "it to finish or use another --out") from None
        except OSError as e:
            raise OutputDirError(f"cannot create the lock file {str(self.path)!r} of output directory "
                                 f"{str(self.out)!r}: {e.strerror or e}") from None
        stale = self._holder() if self.info_path.exists() else None
        try:
            atomic_write_text(self.info_path, json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}))
        except OSError as e:
            lock.release()
            raise OutputDirError(f"cannot write {str(self.info_path)!r} beside output directory {str(self.out)!r}: "
                                 f"{e.strerror or e}") from None
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


#: What attnlab writes into an output directory: a training run's checkpoints, metrics and result, and a
#: comparison's description, runs and report. Anything else in a directory is "unrelated" to attnlab.
_RESULT_NAMES = ("metrics.jsonl", "metrics.csv", "result.json", "tensorboard", "compare.json", "runs",
                 "leaderboard.md", "leaderboard.csv", "report.html", "loss_curves.png", "final_loss.png")
_RESULT_PREFIXES = ("ckpt-", ".tmp-ckpt-", "hypotheses-", "metrics.jsonl.torn-")


def attnlab_results(out: Path) -> list[str]:
    """The names in directory ``out`` that are attnlab results (sorted; empty if ``out`` is not a directory)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name in _RESULT_NAMES or p.name.startswith(_RESULT_PREFIXES))


def _listing(names: list[str]) -> str:
    return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")


def _out_dir_problem(out: Path) -> str | None:
    """Why ``out`` cannot be (or be made) a directory, or ``None``: a file in its place or above it."""
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                return (f"output path {str(out)!r} exists and is not a directory" if p == out else
                        f"output directory {str(out)!r} cannot be created: {str(p)!r} is a file, not a directory")
            return None
    return None


def make_out_dir(out: Path) -> None:
    """``out.mkdir(parents=True, exist_ok=True)``, with any failure (a file in the way, no permission, a full
    disk) as an :class:`OutputDirError` that names the path and the cause."""
    problem = _out_dir_problem(out)
    if problem:
        raise OutputDirError(problem)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"cannot create output directory {str(out)!r}: {e.strerror or e}"
                             f"{f' ({e.filename})' if e.filename and str(e.filename) != str(out) else ''}") from None


def check_writable(out: Path) -> None:
    """Create and remove a probe file in directory ``out``: an unwritable directory is an :class:`OutputDirError`
    now, not a failure at the first checkpoint (``os.access`` is not enough: root passes it on a read-only mount)."""
    probe = out / f".attnlab-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputDirError(f"output directory {str(out)!r} is not writable: {e.strerror or e}") from None


def refuse_used_out_dir(out: Path) -> None:
    """Without ``resume``, a directory holding a run's results (checkpoints, metrics, ``result.json``) is an error:
    training into it would replace its checkpoints and mix two runs' metrics. Other files do not block a run."""
    problem = _out_dir_problem(out)
    if problem:
        raise OutputDirError(problem)
    found = attnlab_results(out)
    if found:
        raise OutputDirError(
            f"output directory {str(out)!r} already holds results ({_listing(found)}); pass resume=True (--resume) "
            "to continue them, or use another directory (--force moves it aside)"
        )


def prepare_out_dir(out_dir: str | Path, *, resume: bool = False, force: bool = False) -> Path | None:
    """Make ``out_dir`` ready for a run.

    * empty or missing: created;
    * holding files and ``resume``: used as is (the caller continues what is there);
    * holding files and ``force``: the old directory is *renamed* to ``<out_dir>.old-<timestamp>`` (nothing is
      deleted) and a fresh one created; returns the backup path;
    * holding attnlab results otherwise: :class:`OutputDirError` ("already holds results", naming them);
    * holding only other files otherwise: :class:`OutputDirError` naming them (a run is not mixed into unrelated
      files).

    A path under a regular file, or a directory that cannot be created or written, is an :class:`OutputDirError`.
    """
    out = Path(out_dir)
    problem = _out_dir_problem(out)
    if problem:
        raise OutputDirError(problem)
    if out.is_dir() and any(out.iterdir()):
        if resume:
            check_writable(out)
            return None
        if force:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            backup = out.with_name(f"{out.name}.old-{stamp}")
            n = 1
            while backup.exists():
                backup = out.with_name(f"{out.name}.old-{stamp}-{n}")
                n += 1
            try:
                os.replace(out, backup)
            except OSError as e:
                raise OutputDirError(f"--force: cannot move {str(out)!r} aside to {str(backup)!r}: "
                                     f"{e.strerror or e}") from None
            make_out_dir(out)
            return backup
        found = attnlab_results(out)
        if found:
            raise OutputDirError(
                f"output directory {str(out)!r} already holds results; pass --resume to continue them or --force to "
                f"move them aside (to <dir>.old-<timestamp>) and start again (it holds {_listing(found)})"
            )
        others = sorted(p.name for p in out.iterdir())
        raise OutputDirError(
            f"output directory {str(out)!r} is not empty: it holds files that are not attnlab results "
            f"({_listing(others)}); use an empty or new directory, or --force to move its contents aside (to "
            "<dir>.old-<timestamp>)"
        )
    make_out_dir(out)
    check_writable(out)
    return None
