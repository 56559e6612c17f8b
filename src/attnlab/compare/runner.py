"""``attnlab compare``: train variants x seeds under one budget at equal parameters, then report.

Output directory::

    OUT/
      compare.json              the comparison (config of every run), written first
      runs/<variant>/seed<k>/   one trainer run each (checkpoints, metrics.jsonl/csv, result.json)
      leaderboard.md, .csv      one row per variant (see :mod:`attnlab.compare.report`)
      loss_curves.png, final_loss.png, report.html

A run is finished when its ``result.json`` exists. ``resume=True`` keeps finished runs, continues unfinished
ones from their newest checkpoint and refuses a directory that holds a *different* comparison; ``force=True``
moves an existing directory aside to ``OUT.old-<timestamp>``; otherwise a non-empty directory is an error.
Nothing already written is ever deleted.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from attnlab.compare.config import CompareConfig
from attnlab.train.config import upgrade_config_dict
from attnlab.train.outdir import OutputDirError, atomic_write_text, prepare_out_dir, run_lock
from attnlab.train.trainer import Trainer, make_task

__all__ = ["run_compare", "CompareResult"]


@dataclass
class CompareResult:
    out_dir: Path
    runs: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    wall_s: float = 0.0


def run_compare(
    cfg: CompareConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    data: Any = None,
    log: Callable[[str], None] = print,
) -> CompareResult:
    """Train every (variant, seed) run of ``cfg`` into ``out_dir`` and write the leaderboard and report.

    ``data``: already loaded data for the task (default: loaded once from ``cfg.base.data`` and shared by every
    run). The comparison holds ``out_dir``'s run lock (:class:`attnlab.train.outdir.RunLock`) throughout: a second
    comparison on the same directory is refused at once."""
    with run_lock(out_dir):
        return _run_compare(cfg, Path(out_dir), resume=resume, force=force, data=data, log=log)


def _run_compare(cfg: CompareConfig, out: Path, *, resume: bool, force: bool, data: Any,
                 log: Callable[[str], None]) -> CompareResult:
    backup = prepare_out_dir(out, resume=resume, force=force)
    if backup is not None:
        log(f"moved the previous contents of {out} to {backup}")
    desc = cfg.to_dict()
    meta = out / "compare.json"
    if meta.exists():
        old = json.loads(meta.read_text())
        if isinstance(old, dict) and "base" in old:  # written by an earlier attnlab: options added since, defaults
            old = {**old, "base": upgrade_config_dict(old["base"])}
        if old != desc:
            diff = sorted(k for k in set(old) | set(desc) if old.get(k) != desc.get(k))
            raise OutputDirError(
                f"{out} holds a different comparison (differs in: {', '.join(diff)}); use another --out, or --force "
                "to move it aside"
            )
    else:
        atomic_write_text(meta, json.dumps(desc, indent=1))

    if data is None:  # load the data once for every run
        data = make_task(cfg.base, progress=cfg.base.progress).shared_data()
    t0 = time.perf_counter()
    result = CompareResult(out_dir=out)
    total = len(cfg.variants) * len(cfg.seeds)
    walls: dict[str, list[float]] = {}  # variant -> wall times of its runs trained here (for the estimate)
    i = 0
    for mech in cfg.variants:
        for seed in cfg.seeds:
            i += 1
            rdir = cfg.run_dir(out, mech, seed)
            done = rdir / "result.json"
            if done.is_file():
                log(f"[{i}/{total}] {mech} seed {seed}: finished earlier, kept")
            else:
                log(f"[{i}/{total}] {mech} seed {seed}{_eta(cfg, out, walls, mech, seed)}")
                t_run = time.perf_counter()
                trainer = Trainer(cfg.run_config(mech, seed), out_dir=rdir, data=data, resume=True, log=log)
                trainer.fit()
                walls.setdefault(mech, []).append(time.perf_counter() - t_run)
                del trainer
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            result.runs[(mech, seed)] = json.loads(done.read_text())
    result.wall_s = time.perf_counter() - t0

    from attnlab.compare.report import write_report

    result.files = write_report(out, cfg, result.runs)
    log("wrote " + ", ".join(str(p) for p in result.files.values()))
    return result


def _eta(cfg: Any, out: Path, walls: dict[str, list[float]], mech: str, seed: int) -> str:
    """`` (about M min left ...)``: each run still to train (this one included) costs the mean wall time of the runs
    of its own variant trained here; variants not timed yet are named instead of guessed (variants may differ in
    cost by orders of magnitude, e.g. DLinear and an autoregressive decoder)."""
    runs = [(m, s) for m in cfg.variants for s in cfg.seeds]
    todo = runs[runs.index((mech, seed)):]
    todo = [(m, s) for m, s in todo if (m, s) == (mech, seed) or not (cfg.run_dir(out, m, s) / "result.json").is_file()]
    timed = [m for m, _ in todo if walls.get(m)]
    if not timed:
        return ""
    left = sum(statistics.fmean(walls[m]) for m in timed)
    untimed = sorted({m for m, _ in todo if not walls.get(m)}, key=list(cfg.variants).index)
    n_untimed = sum(1 for m, _ in todo if not walls.get(m))
    more = f", plus {n_untimed} of {', '.join(untimed)} (not timed yet)" if untimed else ""
    noun = "run" if len(timed) == 1 else "runs"
    return f" (about {left / 60:.0f} min left for {len(timed)} {noun} of variants timed so far{more})"
