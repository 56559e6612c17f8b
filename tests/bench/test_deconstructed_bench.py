"""The ``deconstructed`` benchmark suite in quick mode at tiny sizes (a smoke test: it measures, never asserts
speeds)."""

from __future__ import annotations

import torch

from attnlab.bench import BenchOptions, get_suite
from attnlab.bench.deconstructed import cache_bytes


def test_deconstructed_suite_quick_tiny() -> None:
    opts = BenchOptions(quick=True, lengths=(8, 16), d_model=16, n_heads=2, progress=False, budget_s=0.5,
                        mechanisms=("decon_mlp", "decon_nonapprox", "decon_rndembqk"))
    res = get_suite("deconstructed").run(opts)
    main, growth, state = res.tables
    assert not res.failures, res.failures
    assert {r["mechanism"] for r in main.rows} == {"standard", "decon_mlp", "decon_nonapprox", "decon_rndembqk"}
    assert all(r["fwd ×standard"] > 0 for r in main.rows)
    std = next(r for r in main.rows if r["mechanism"] == "standard" and r["T"] == 8)
    assert abs(std["mem ×standard"] - 1.0) < 1e-9
    assert all("time exp fwd" in g for g in growth.rows)
    st = {r["mechanism"]: r for r in state.rows}
    assert st["decon_mlp"]["state bytes at 2T"] == 0  # no decoding state (paper Tbl. 8: 0)
    # Non-approximate: a constant-size state (numerator, denominator, running max); standard: a KV cache of at
    # least 2 d float32 values per token (allocated capacity, which may run ahead of the tokens)
    assert st["decon_nonapprox"]["bytes per added token"] == 0
    assert st["standard"]["state bytes at 2T"] >= st["standard"]["state bytes at T"] >= 8 * 2 * 16 * 4


def test_cache_bytes_counts_each_storage_once() -> None:
    t = torch.zeros(4, 5)

    class C:
        def __init__(self) -> None:
            self.a, self.b, self.c = t, (t, torch.zeros(3, dtype=torch.float64)), {"x": None}

    assert cache_bytes(C()) == 4 * 5 * 4 + 3 * 8
