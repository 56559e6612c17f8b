"""The built-in suites at tiny sizes: correctness gates, ratios, exponents, the overhead hand path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attnlab.bench import BenchOptions, get_suite
from attnlab.bench.overhead import _hand_path
from attnlab.bench.sparsity import sparsity_masks
from attnlab.bench.steps import BASELINE
from attnlab.layers import registry
from attnlab.masks import dense
from attnlab.verify.toys import toy_spec

TINY = dict(device="cpu", lengths=(8, 16), quick=True, d_model=16, n_heads=2, progress=False, budget_s=1.0)


@pytest.fixture
def toys(monkeypatch):
    registry.names()
    good = toy_spec("toy-ok")
    bad = dataclasses.replace(toy_spec("toy-bad", fault="backend-differs"), defaults={"impl": "sdpa"})
    for s in (good, bad):
        monkeypatch.setitem(registry.MECHANISMS.entries, s.name, s)
    return good, bad


def test_mechanisms_suite_measures_good_layers_and_reports_failures(toys):
    res = get_suite("mechanisms").run(BenchOptions(mechanisms=("toy-ok", "toy-bad"), dtype=torch.float64, **TINY))
    rows = res.tables[0].rows
    base = [r for r in rows if r["mechanism"] == BASELINE]
    assert [r["T"] for r in base] == [8, 16] and all(r["fwd ×sdpa"] == 1.0 for r in base)
    ok = [r for r in rows if r["mechanism"] == "toy-ok"]
    assert all(r["status"] == "ok" and r["fwd ms"] > 0 and r["fwd+bwd MiB"] > 0 for r in ok)
    # time ratios divide by SDPA timed interleaved with the case itself (same run), memory by the baseline row
    assert ok[0]["fwd ×sdpa"] == pytest.approx(ok[0]["fwd ms"] / ok[0]["baseline fwd ms"])
    assert ok[0]["fwd+bwd ×sdpa"] == pytest.approx(ok[0]["fwd+bwd ms"] / ok[0]["baseline fwd+bwd ms"])
    assert ok[0]["fwd mem ×sdpa"] == pytest.approx(ok[0]["fwd MiB"] / base[0]["fwd MiB"])
    bad = [r for r in rows if r["mechanism"] == "toy-bad"]
    assert all(r["status"].startswith("FAILED correctness") and "fwd ms" not in r for r in bad)
    assert {r["mechanism"] for r in res.failures} == {"toy-bad"}
    growth = {g["mechanism"]: g for g in res.tables[1].rows}
    assert growth["toy-ok"]["mem exp fwd+bwd"] > 0.5  # memory grows with T


def test_overhead_hand_path_matches_the_standard_module():
    if "standard" not in registry.names():
        pytest.fail("the overhead suite needs the 'standard' mechanism")
    opts = BenchOptions(**TINY)
    layer = registry.get("standard").build(d_model=16, n_heads=2, rope=False, dropout=0.0).eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        assert torch.allclose(_hand_path(layer, opts)(x), layer(x), atol=1e-5)
    res = get_suite("overhead").run(dataclasses.replace(opts, lengths=(16,)))
    assert not res.failures
    (summary,) = res.tables[1].rows
    assert summary["module / hand fwd"] > 0 and summary["met"] == ""  # the target is judged at T=1024 only


def test_hand_path_rejects_an_unreadable_module():
    with pytest.raises(ValueError, match="cannot read the projections"):
        _hand_path(torch.nn.Sequential(torch.nn.Linear(4, 4)), BenchOptions(**TINY))


def test_sparsity_masks_get_sparser_within_each_family():
    T = 256
    ms = sparsity_masks(T)
    assert ms[0].name == "causal"
    for family in ("sliding_window", "strided", "bigbird"):
        dens = [float(dense(m, T, T).double().mean()) for m in ms if m.name.startswith(family)]
        assert len(dens) >= 3 and dens == sorted(dens, reverse=True), (family, dens)


def test_projection_guard_skips_cases_projected_over_the_limits():
    from attnlab.bench.mechanisms import _projection_guard

    opts = BenchOptions(budget_s=15.0)
    quad = [{"T": 256, "fwd+bwd MiB": 40, "fwd+bwd ms": 100}, {"T": 1024, "fwd+bwd MiB": 640, "fwd+bwd ms": 1600}]
    note = _projection_guard(quad, 4096, opts)
    assert note is not None and "projected fwd+bwd 25600 ms > limit 15000 ms" in note
    lin = [{"T": 256, "fwd+bwd MiB": 4, "fwd+bwd ms": 10}, {"T": 1024, "fwd+bwd MiB": 16, "fwd+bwd ms": 40}]
    assert _projection_guard(lin, 4096, opts) is None
    assert _projection_guard([], 4096, opts) is None


def test_mechanisms_suite_says_what_it_timed_of_a_layer_with_per_call_inputs():
    res = get_suite("mechanisms").run(BenchOptions(mechanisms=("future-light", "standard"), dtype=torch.float64,
                                                   **TINY))
    rows = [r for r in res.tables[0].rows if r["mechanism"] in ("future-light", "standard")]
    light = [r for r in rows if r["mechanism"] == "future-light"]
    assert light and all(r["status"] == "ok" and "its plain causal path" in r["note"] and "bench future" in r["note"]
                         for r in light)
    assert all(not r.get("note") for r in rows if r["mechanism"] == "standard")
