"""Metric records (JSONL + CSV + TensorBoard), evaluation summaries and peak-memory measurement."""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["MetricsWriter", "PeakMemory", "read_jsonl", "CSV_COLUMNS"]

CSV_COLUMNS = [
    "kind", "step", "tokens", "loss", "ppl", "bpc", "lr", "grad_norm", "tokens_per_s", "elapsed_s", "split",
]


def _parse_jsonl(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """(records, the torn last line or ``None``). Only the last line may be torn (a crash mid-write): a bad line
    before it is a ``ValueError`` naming the file and line."""
    if not path.is_file():
        return [], None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            if i == len(lines) - 1:
                return records, line
            raise ValueError(f"{path}: line {i + 1} is not a JSON record ({line[:40]!r}); only a torn last line is "
                             "repaired on --resume: move the file aside to continue") from None
        records.append(rec)
    return records, None


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a torn last line (a crash, or a run writing it right now) is left out."""
    return _parse_jsonl(Path(path))[0]


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and ``metrics.csv`` (and TensorBoard) in ``out_dir``.

    Each record is a dict with ``kind`` (``"train"`` / ``"eval"``) and ``step``. Disabled writers (non-zero
    ranks, runs without an output directory) accept records and write nothing. :meth:`truncate_after` drops
    records of steps beyond a resumed checkpoint so a resumed run's logs read as one run.
    """

    def __init__(self, out_dir: str | Path | None, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled and out_dir is not None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._tb = None
        self._tensorboard = tensorboard
        self._columns: list[str] | None = None
        if self.enabled:
            from attnlab.train.outdir import make_out_dir

            assert self.out_dir is not None
            make_out_dir(self.out_dir)  # a file in the way, no permission: an OutputDirError naming the path
            self.jsonl_path = self.out_dir / "metrics.jsonl"
            self.csv_path = self.out_dir / "metrics.csv"

    def _open_tb(self) -> Any:
        if self._tb is None and self._tensorboard and self.enabled:
            from torch.utils.tensorboard import SummaryWriter

            assert self.out_dir is not None
            self._tb = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))
        return self._tb

    def _rewrite_csv(self, records: list[dict[str, Any]]) -> None:
        """Write the CSV afresh: the standard columns, then every other key the records have (task metrics such as
        ``bleu``, auxiliary loss terms ``loss.<name>``) in order of appearance."""
        cols = list(CSV_COLUMNS)
        for r in records:
            cols += [k for k in r if k not in cols]
        self._columns = cols
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            for r in records:
                w.writerow(r)
        os.replace(tmp, self.csv_path)

    def truncate_after(self, step: int) -> Path | None:
        """Forget records with ``step > step`` (used when resuming from the checkpoint of ``step``).

        A torn last line of ``metrics.jsonl`` (a crash mid-write) is dropped from the file and saved aside as
        ``metrics.jsonl.torn-<time>``, whose path is returned (``None``: there was none)."""
        if not self.enabled:
            return None
        all_records, torn = _parse_jsonl(self.jsonl_path)
        torn_path = None
        if torn is not None:
            torn_path = self.jsonl_path.with_name(f"{self.jsonl_path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
            n = 1
            while torn_path.exists():
                torn_path, n = torn_path.with_name(f"{torn_path.name.split('~')[0]}~{n}"), n + 1
            torn_path.write_text(torn + "\n", encoding="utf-8")
        records = [r for r in all_records if r.get("step", 0) <= step]
        tmp = self.jsonl_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        os.replace(tmp, self.jsonl_path)
        self._rewrite_csv(records)
        return torn_path

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._columns is None or not self.csv_path.exists() or any(k not in self._columns for k in record):
            self._rewrite_csv(read_jsonl(self.jsonl_path))  # a new column (rare): rebuild from the JSONL
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._columns, extrasaction="ignore").writerow(record)
        tb = self._open_tb()
        if tb is not None:
            kind = record.get("kind", "train")
            split = record.get("split", "")
            prefix = f"{kind}/{split}" if split else kind
            for k, v in record.items():
                if k in ("kind", "step", "split") or not isinstance(v, (int, float)) or isinstance(v, bool):
                    continue
                tb.add_scalar(f"{prefix}/{k}", v, record.get("step", 0))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0


class PeakMemory:
    """Peak memory of a block of work.

    On CUDA: ``torch.cuda.max_memory_allocated`` (reset on entry) — the tensors' peak. On CPU: the peak of the
    process's resident set size above its size on entry, sampled every ``interval`` seconds by a thread (a
    sampled, coarser figure; it includes allocator slack).
    """

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device = device
        self.interval = interval
        self.peak_bytes = 0
        self.kind = "cuda-allocated" if device.type == "cuda" else "cpu-rss-increase"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._base = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() - self._base)
            time.sleep(self.interval)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() - self._base)
