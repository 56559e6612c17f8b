"""Benchmark reports: Markdown + CSV tables and PNG plots, each with the command and the machine.

Files are ``<out>/<suite>-<device>.md``, ``.csv`` (the first table) and the suite's plots
``<suite>-<device>*.png``. An existing file is never overwritten unless ``force=True``.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

from attnlab.bench.core import BenchOptions, SuiteResult, get_suite

__all__ = ["machine_info", "format_value", "markdown", "output_paths", "refuse_existing", "write_results"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(options: BenchOptions | None = None) -> dict[str, str]:
    """CPU model, cores, threads, OS, Python, torch version and, on CUDA, the GPU."""
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if hasattr(os, "getloadavg"):  # a busy machine makes times noisy: say how busy it was
        info["load average (1/5/15 min)"] = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    dev = options.device if options else "cpu"
    if torch.device(dev).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(dev))
        info["cuda"] = str(torch.version.cuda)
    info["device"] = str(dev)
    return info


def format_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def _md_table(columns: list[str], rows: list[dict[str, Any]]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        out.append("| " + " | ".join(format_value(r.get(c)).replace("|", "/") for c in columns) + " |")
    return out


def markdown(result: SuiteResult, *, command: str, date: str, plots: list[Path]) -> str:
    o = result.options
    lines = [f"# Benchmark `{result.suite}` on {o.device}", "",
             f"- command: `{command}`", f"- date: {date}"]
    lines += [f"- {k}: {v}" for k, v in machine_info(o).items()]
    t = o.timing()  # what the suites really ran with (--quick replaces --warmup / --repeats)
    lines += [f"- dtype: {str(o.dtype).removeprefix('torch.')}, d_model={o.d_model}, n_heads={o.n_heads}, "
              f"batch={o.batch_size}; timing: {t['warmup']} warm-up call(s), then the median of at least "
              f"{t['repeats']} timed calls, more until {t['min_time_s']:g} s of timing have passed (at most "
              f"{t['max_repeats']}), as few as {t['min_repeats']} once a case has used its "
              f"{t['budget_s']:g} s budget", ""]
    for note in result.notes:
        lines.append(f"> {note}")
        lines.append("")
    for t in result.tables:
        lines += [f"## {t.title}", ""] + _md_table(t.columns, t.rows) + [""]
    if result.failures:
        lines += ["## Failures", ""]
        for r in result.failures:
            label = " ".join(f"{k}={r[k]}" for k in list(r)[:3] if k != "status")
            lines.append(f"- {label}: {r.get('status')}")
        lines.append("")
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    return "\n".join(lines)


def output_paths(suite: str, device: str, out_dir: Path) -> tuple[Path, Path, Path]:
    """``(markdown, csv, plot stem)`` for a suite on a device."""
    dev = torch.device(device).type
    stem = out_dir / f"{suite}-{dev}"
    return stem.with_suffix(".md"), stem.with_suffix(".csv"), stem


def refuse_existing(suites: list[str], device: str, out_dir: Path) -> None:
    """A ``FileExistsError`` naming every report file (Markdown, CSV, plots) of these suites already in ``out_dir``."""
    existing = []
    for suite in suites:
        md_path, csv_path, stem = output_paths(suite, device, out_dir)
        existing += [p for p in (md_path, csv_path) if p.exists()] + sorted(out_dir.glob(stem.name + "*.png"))
    if existing:
        raise FileExistsError(f"{', '.join(map(str, existing))} already exist(s); pass --force to overwrite or "
                              "choose another --out")


def write_results(result: SuiteResult, out_dir: str | Path, *, command: str, force: bool = False) -> list[Path]:
    """Write the Markdown, CSV and plots of ``result`` into ``out_dir``; returns the written paths.

    Raises ``FileExistsError`` (before writing anything) if a report of this suite and device is already there
    and ``force`` is false.
    """
    out = Path(out_dir)
    if not force:
        refuse_existing([result.suite], result.options.device, out)
    md_path, csv_path, stem = output_paths(result.suite, result.options.device, out)
    out.mkdir(parents=True, exist_ok=True)
    suite = get_suite(result.suite)
    plots = list(suite.plot(result, stem)) if suite.plot else []
    date = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    md_path.write_text(markdown(result, command=command, date=date, plots=plots))
    table = result.tables[0]
    with csv_path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(table.columns)
        for r in table.rows:
            w.writerow([r.get(c, "") for c in table.columns])
    return [md_path, csv_path, *plots]
