"""The causal-discovery benchmark's quick preset runs end to end (benchmarks/discovery/bench.py; PCMCI rows only when
the GPL extra tigramite is installed, which the test suite does not install)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "discovery" / "bench.py"


def _load():
    spec = importlib.util.spec_from_file_location("discovery_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["discovery_bench"] = mod  # (dataclasses look their module up there)
    sys.path.insert(0, str(BENCH.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH.parent))
    return mod


def test_quick_preset_writes_the_tables(tmp_path, capsys):
    bench = _load()
    assert bench.main(["--preset", "quick", "--out", str(tmp_path), "--graphs", "1"]) == 0
    text = (tmp_path / "README.md").read_text()
    for row in ("| G1 N=4 | attnlab-none |", "| G1 N=4 | attnlab-a |", "| G4 N=4 | attnlab-b |"):
        assert row in text
    assert "G4 N=4, attnlab-b: **0.0**" in text and "G1 N=4, attnlab-a: **0.0**" in text  # exact exclusion
    hitl = json.loads((tmp_path / "records" / "hitl-exact.json").read_text())
    assert [r["round"] for r in hitl["rounds"]] == [0, 1, 2, 3] and hitl["true_edges_excluded"] == 0
    rec = json.loads((tmp_path / "records" / "G4_N4-g0-attnlab-a.json").read_text())
    assert rec["n_excluded"] == 1 and rec["max_excluded_gradient"] == 0.0
    # resumable: a second call keeps every record and only rewrites the tables
    before = {p.name: p.read_bytes() for p in (tmp_path / "records").glob("*.json")}
    assert bench.main(["--preset", "quick", "--out", str(tmp_path), "--graphs", "1"]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "records").glob("*.json")} == before


def test_prior_pairs_exclude_only_true_non_edges():
    bench = _load()
    from attnlab.discovery import generate

    s = generate("var", n_vars=6, length=200, seed=4, max_lag=2)
    adj, cols = s.adjacency(include_self=True), list(s.columns)
    pairs = bench.prior_pairs(s, 4)
    n_non = int((~adj).sum())
    assert len(pairs) == n_non // 2 and pairs == bench.prior_pairs(s, 4)
    assert not any(adj[cols.index(e), cols.index(c)] for c, e in pairs)
    assert bench.prior_pairs(generate("confounder", n_vars=4, length=200, seed=0), 0) == [("x", "y")]
