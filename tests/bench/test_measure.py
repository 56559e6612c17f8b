"""Measurement utilities: exponent fit, live-tensor peak memory, timing, report writing, the suite registry."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.bench import BenchOptions, Suite, SuiteResult, Table, get_suite, register_suite, suites, write_results
from attnlab.bench.core import SUITES
from attnlab.bench.measure import LiveTensorTracker, fit_exponent, peak_memory, time_fn, time_fns


def test_fit_exponent_recovers_known_powers():
    xs = [256, 1024, 4096]
    assert fit_exponent(xs, [3.0 * x**2 for x in xs]) == pytest.approx(2.0, abs=1e-12)
    assert fit_exponent(xs, [0.5 * x for x in xs]) == pytest.approx(1.0, abs=1e-12)
    assert fit_exponent([1, 2, 4], [1, 1, 1]) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(fit_exponent([8], [1.0]))
    assert math.isnan(fit_exponent([8, 16], [1.0, float("nan")]))


def test_live_tensor_tracker_counts_allocations_frees_and_peak():
    a = torch.ones(1000)  # allocated before: not counted
    with LiveTensorTracker() as t:
        b = a + 1  # +4000
        c = b * 2  # +4000 -> 8000
        del b  # -4000
        d = c.view(10, 100)  # a view: no new storage
        c.add_(1)  # in place: no new storage
        e = torch.empty(500)  # +2000 -> 6000
    assert t.peak == 8000 and t.live == 6000
    del c, d, e


def test_live_tensor_tracker_does_not_count_views_or_in_place_ops_of_tensors_made_before():
    a = torch.ones(1000)  # allocated before: neither its views nor in-place updates are allocations
    with LiveTensorTracker() as t:
        v = a.view(10, 100)
        vt = v.t()
        a.add_(1)
        d = a.detach()
    assert t.peak == 0 and t.live == 0
    del v, vt, d
    # F.linear decomposes into aten.t(weight) + addmm: only the output (32x64 float32) is new, not the weight
    w, x = torch.randn(64, 64), torch.randn(32, 64)
    with torch.no_grad():
        assert peak_memory(lambda: torch.nn.functional.linear(x, w)) == 32 * 64 * 4


def test_live_tensor_tracker_sees_the_backward_pass():
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(32, 64)

    def step() -> None:
        w.grad = None
        (x @ w).tanh().sum().backward()

    peak = peak_memory(step)
    # at least the activation (32x64) and the weight gradient (64x64), float32
    assert peak >= (32 * 64 + 64 * 64) * 4
    with torch.no_grad():
        fwd_peak = peak_memory(lambda: (x @ w).tanh())
    # the matmul result and tanh's output are alive together before the temporary is freed
    assert fwd_peak == 2 * 32 * 64 * 4


def test_time_fn_takes_the_median_and_respects_repeats():
    calls = []
    t = time_fn(lambda: calls.append(1), warmup=2, repeats=5, min_time_s=0.0)
    assert len(calls) == 7 and len(t.samples) == 5 and t.median == sorted(t.samples)[2]
    ts = time_fns({"a": lambda: None, "b": lambda: sum(range(1000))}, warmup=0, repeats=4)
    assert len(ts["a"].samples) == len(ts["b"].samples) == 4
    with pytest.raises(ValueError, match="repeats >= 1"):
        time_fn(lambda: None, repeats=0)


def test_bench_options_validation():
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=256"):
        BenchOptions(n_heads=3)
    with pytest.raises(ValueError, match="lengths must be positive ints"):
        BenchOptions(lengths=(0,))
    with pytest.raises(ValueError, match="repeats >= 1"):
        BenchOptions(repeats=0)
    o = BenchOptions(quick=True)
    assert o.lengths_or(cpu=(1,), cuda=(2,), quick=(3,)) == (3,)
    # --quick replaces warmup/repeats; the report header states the settings actually used
    assert o.timing()["warmup"] == 1 and o.timing()["repeats"] == 3
    t = BenchOptions(warmup=4, repeats=9).timing()
    assert (t["warmup"], t["repeats"], t["min_time_s"], t["max_repeats"]) == (4, 9, 1.0, 200)
    assert BenchOptions(min_time_s=0.1).timing()["min_time_s"] == 0.1  # --min-time (a GPU run of many cases)
    assert BenchOptions(min_time_s=0.1, quick=True).timing()["min_time_s"] == 0.05  # --quick still replaces it
    with pytest.raises(ValueError, match="min_time_s"):
        BenchOptions(min_time_s=-1.0)
    assert BenchOptions(lengths=(5,)).lengths_or(cpu=(1,), cuda=(2,), quick=(3,)) == (5,)


def test_plugin_suite_registry_and_report(tmp_path, monkeypatch):
    assert {"mechanisms", "overhead", "sparsity"} <= {s.name for s in suites()}

    def run(options: BenchOptions) -> SuiteResult:
        return SuiteResult(suite="plugin-test", options=options, notes=["a note"],
                           tables=[Table(title="t", columns=["case", "status", "x"],
                                         rows=[{"case": "a", "status": "ok", "x": 1.5},
                                               {"case": "b", "status": "FAILED correctness: 1 > 0"}])])

    monkeypatch.setitem(SUITES.entries, "plugin-test", Suite(name="plugin-test", description="d", run=run))
    with pytest.raises(ValueError, match="already registered"):
        register_suite(Suite(name="plugin-test", description="d", run=run))
    res = get_suite("plugin-test").run(BenchOptions())
    assert [r["case"] for r in res.failures] == ["b"]
    paths = write_results(res, tmp_path, command="attnlab bench plugin-test")
    md = paths[0].read_text()
    assert "`attnlab bench plugin-test`" in md and "> a note" in md and "| a | ok | 1.50 |" in md
    assert "2 warm-up call(s), then the median of at least 7 timed calls" in md
    assert "## Failures" in md and "b: FAILED correctness" in md
    assert paths[1].read_text().splitlines()[0] == "case,status,x"
    with pytest.raises(FileExistsError, match="--force"):
        write_results(res, tmp_path, command="again")
    assert write_results(res, tmp_path, command="again", force=True)[0].read_text().count("again") == 1
    with pytest.raises(ValueError, match="unknown benchmark suite 'nope'"):
        get_suite("nope")
