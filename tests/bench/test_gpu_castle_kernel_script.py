"""benchmarks/gpu/castle_kernel.py: every phase runs on the CPU (Triton's interpreter, toy sizes), rows land in the
JSONL as they are measured, the sweep's winner is written, and the report is rebuilt from the JSONL alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (dev extra)")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu" / "castle_kernel.py"


@pytest.mark.slow
def test_dry_run_writes_every_phase_and_renders(tmp_path: Path) -> None:
    # a fresh process: the script sets TRITON_INTERPRET=1 before triton is first imported
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "castle-kernel.jsonl").read_text().splitlines()]
    kinds = [r["kind"] for r in rows]
    assert kinds.count("env") == 1 and kinds.count("check") == 4 and kinds.count("sweep") == 2
    assert kinds.count("speed") == 2  # full CASTLE and CASTLE-SWL at the one dry-run length
    checks = [r for r in rows if r["kind"] == "check"]
    assert all(r["status"] == "ok" for r in checks), checks
    for r in checks:  # errors of the output and all six gradients against both float64 forms
        assert set(r["err vs theorem1"]) == {"out", "q_u", "k_u", "v_u", "q_c", "k_c", "v_c"}
        assert max(r["err vs theorem1"].values()) <= r["tol"] and r["err chunked vs theorem1 (float64)"] < 1e-10
    best = json.loads((tmp_path / "castle-kernel-best.json").read_text())
    sweep = [r for r in rows if r["kind"] == "sweep" and r["status"] == "ok"]
    fastest = min(sweep, key=lambda r: r["fwd+bwd ms"])
    assert best["16"]["chunk"] == fastest["chunk"] and best["16"]["num_warps"] == fastest["num_warps"]
    speed = [r for r in rows if r["kind"] == "speed"]
    assert all(r["status"] == "ok" and r["castle config"] == [fastest["chunk"], fastest["num_warps"]] for r in speed)
    assert all(abs(r["fwd+bwd ratio"] - r["castle fwd+bwd ms"] / r["flash fwd+bwd ms"]) < 1e-12 for r in speed)
    md = (tmp_path / "castle-kernel-cuda.md").read_text()
    assert "| float32 | 16 | 24 |" in md and "| bfloat16 | 16 | 24 | 7 |" in md
    # --render rebuilds the report from the JSONL alone (what is done after the files come back from a device)
    (tmp_path / "castle-kernel-cuda.md").unlink()
    proc = subprocess.run([sys.executable, str(SCRIPT), "--render", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "castle-kernel-cuda.md").read_text() == md


def test_past_the_deadline_cases_are_recorded_as_skipped(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--phase", "checks", "--max-seconds", "0",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "castle-kernel.jsonl").read_text().splitlines()]
    checks = [r for r in rows if r["kind"] == "check"]
    assert len(checks) == 4 and all(r["status"] == "skipped: deadline" for r in checks)
