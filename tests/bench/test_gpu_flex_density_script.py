"""benchmarks/gpu/flex_density.py on the CPU (--dry-run): every mask is checked against SDPA before it is timed, rows
land in the JSONL, and the density exponent is fitted from the measured rows."""

from __future__ import annotations

import json
import math
from pathlib import Path


def test_dry_run_checks_times_and_fits(tmp_path: Path, benchmark_script) -> None:
    mod = benchmark_script("gpu/flex_density.py")
    assert mod.main(["--dry-run", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "flex-density.jsonl").read_text().splitlines()]
    flex = [r for r in rows if r["kind"] == "flex"]
    assert [r["mask"] for r in flex][0] == "causal" and len(flex) == 5
    assert all(r["status"] == "ok" and r["rel err vs sdpa"] <= 1e-4 and r["fwd ms"] > 0 for r in flex)
    densities = [r["density"] for r in flex]
    assert densities == sorted(densities, reverse=True)  # sparser and sparser
    (exp,) = [r for r in rows if r["kind"] == "exponent"]
    assert math.isclose(exp["exponent"], mod.fit_exponent(densities, [r["fwd ms"] for r in flex]))
    assert math.isclose(mod.fit_exponent([1, 2, 4], [3, 6, 12]), 1.0)  # proportional: exponent 1
    md = (tmp_path / "flex-density-cuda.md").read_text()
    assert "| causal | 0.50" in md and "Density exponent, fwd:" in md


def test_past_the_deadline_masks_are_recorded_as_skipped(tmp_path: Path, benchmark_script) -> None:
    mod = benchmark_script("gpu/flex_density.py")
    assert mod.main(["--dry-run", "--max-seconds", "0", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "flex-density.jsonl").read_text().splitlines()]
    assert all(r["status"] == "skipped: deadline" for r in rows if r["kind"] == "flex")
