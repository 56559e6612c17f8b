"""Protecting output directories: never overwrite results silently, never delete them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from attnlab._io import atomic_write_text

__all__ = ["prepare_out_dir", "OutputDirError", "atomic_write_text"]


class OutputDirError(ValueError):
    """An output directory that already holds results."""


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
