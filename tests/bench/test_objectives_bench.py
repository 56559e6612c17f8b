"""The ``objectives`` benchmark suite (CAT and LeaF against plain training) in quick mode at tiny sizes: a smoke
test of the measurement and its correctness gates (it measures, never asserts speeds)."""

from __future__ import annotations

from attnlab.bench import BenchOptions, get_suite
from attnlab.bench.objectives import OBJECTIVE_CASES


def test_objectives_suite_quick_tiny(tmp_path) -> None:
    opts = BenchOptions(quick=True, lengths=(12, 24), d_model=16, n_heads=2, batch_size=2, progress=False,
                        budget_s=0.5)
    suite = get_suite("objectives")
    res = suite.run(opts)
    main, growth = res.tables
    assert not res.failures, res.failures
    assert [(r["case"], r["T"]) for r in main.rows] == [(c, T) for T in (12, 24) for c in OBJECTIVE_CASES]
    assert all(r["step ms"] > 0 and r["× plain"] > 0 and r["peak MiB"] > 0 for r in main.rows)
    assert all(r["mem × plain"] == 1.0 for r in main.rows if r["case"] == "plain")
    # CAT holds each layer's (B, H, T, T) probabilities in the graph: more memory than the fast path
    assert all(r["mem × plain"] > 1.0 for r in main.rows if r["case"] == "cat")
    assert {g["case"] for g in growth.rows} == set(OBJECTIVE_CASES)
    assert all(p.exists() for p in suite.plot(res, tmp_path / "objectives"))
