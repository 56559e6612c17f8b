"""Run benchmark suites and write their reports: what ``attnlab bench`` and ``attnlab demo`` do."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from attnlab.bench.core import SUITES, BenchOptions
from attnlab.bench.report import refuse_existing, write_results

__all__ = ["run_suites"]


def _quiet(line: str) -> None:
    pass


def run_suites(names: Sequence[str], options: BenchOptions, out: str | Path, *, command: str, force: bool = False,
               threads: int | None = None, echo: Callable[[str], None] = _quiet) -> tuple[int, list[Path]]:
    """Run the suites ``names`` and write their reports into ``out``; returns (exit status, written paths).

    The status is 1 when a case failed its correctness check or raised, else 0. ``command`` is the command line
    that reproduces the run, written into every report; ``threads`` sets ``torch.set_num_threads``; ``echo``
    receives a line per suite, per failure and per written file.

    Raises, before anything is measured, ``ValueError`` for an unknown suite and ``FileExistsError`` when a
    report of one of the suites is already in ``out`` and ``force`` is false.
    """
    suites = SUITES.get_all(names)
    out = Path(out)
    if not force:
        refuse_existing([s.name for s in suites], options.device, out)
    if threads:
        torch.set_num_threads(threads)
    status, written = 0, []
    for suite in suites:
        echo(f"== {suite.name} ({options.device}) ==")
        result = suite.run(options)
        paths = write_results(result, out, command=command, force=force)
        written += paths
        for f in result.failures:
            echo(f"  FAILED {f.get('mechanism', f.get('mask', f.get('case', '')))} T={f.get('T')}: {f['status']}")
        if result.failures:
            status = 1
        for p in paths:
            echo(f"  wrote {p}")
    return status, written
