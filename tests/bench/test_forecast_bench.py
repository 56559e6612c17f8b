"""The ``forecast`` benchmark suite (AutoHFormer vs the full-attention Transformer forecaster by look-back) in quick
mode at tiny sizes: a smoke test of the measurement and its correctness gate (it measures, never asserts speeds)."""

from __future__ import annotations

from attnlab.bench import BenchOptions, get_suite
from attnlab.bench.forecast import FORECAST_MODELS


def test_forecast_suite_quick_tiny(tmp_path) -> None:
    suite = get_suite("forecast")
    res = suite.run(BenchOptions(quick=True, lengths=(16, 40), batch_size=2, progress=False, budget_s=0.3))
    main, growth = res.tables
    assert not res.failures, res.failures
    assert [(r["model"], r["L"]) for r in main.rows] == [(m, L) for L in (16, 40) for m in FORECAST_MODELS]
    for r in main.rows:
        assert r["train ms"] > 0 and r["infer ms"] > 0 and r["train MiB"] > 0
        if r["model"] == "transformer":
            assert r["train ×transformer"] == r["mem ×transformer"] == r["infer ×transformer"] == 1.0
    assert {g["model"] for g in growth.rows} == set(FORECAST_MODELS)
    assert all(p.exists() for p in suite.plot(res, tmp_path / "forecast"))
