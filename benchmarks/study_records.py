"""Carry a long `attnlab study` across machines or sessions without its checkpoints.

    python benchmarks/study_records.py save runs/study-full-wt2 benchmarks/results/study-deconstructing-full-wt2
    python benchmarks/study_records.py restore benchmarks/results/study-deconstructing-full-wt2 runs/study-full-wt2

A finished run of a study is its ``result.json`` and ``study_eval.json`` (or ``diverged.json``): the study treats
a run with those as done and builds its report from them alone, so they are all a later session needs to go on
where this one stopped (checkpoints stay behind; an unfinished run starts again). ``save`` copies them, with
``study.json`` and ``bigram.json``, from a study directory into DEST (a few kB per run, small enough to commit);
``restore`` copies them back into a study directory before the same `attnlab study` command resumes. Neither ever
overwrites a file that exists with different contents: it stops and names the file.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

STUDY_FILES = ("study.json", "bigram.json")
RUN_FILES = ("result.json", "study_eval.json", "diverged.json")


def _finished_files(src: Path) -> list[Path]:
    files = [src / name for name in STUDY_FILES if (src / name).is_file()]
    for run in sorted(d for d in src.glob("runs/*/*/seed*") if d.is_dir()):
        if (run / "study_eval.json").is_file() or (run / "diverged.json").is_file():
            files += [run / name for name in RUN_FILES if (run / name).is_file()]
    return files


def copy_finished(src: Path, dest: Path) -> list[Path]:
    """Copy the study files and every finished run's files from ``src`` to ``dest``; returns the files copied.

    Raises ``FileExistsError`` naming a file of ``dest`` that exists with other contents (nothing is copied then)."""
    plan = [(f, dest / f.relative_to(src)) for f in _finished_files(src)]
    for f, target in plan:
        if target.exists() and target.read_bytes() != f.read_bytes():
            raise FileExistsError(f"{target} exists with other contents than {f}; not overwriting it")
    copied = []
    for f, target in plan:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            copied.append(target)
    return copied


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] not in ("save", "restore"):
        print(__doc__.strip().splitlines()[0] + "\nusage: study_records.py save|restore SRC DEST", file=sys.stderr)
        return 2
    try:
        copied = copy_finished(Path(args[1]), Path(args[2]))
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    runs = sum(p.name in ("study_eval.json", "diverged.json") for p in copied)
    print(f"{args[0]}: {len(copied)} files ({runs} finished runs) from {args[1]} to {args[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
