"""The ``castle`` benchmark suite at tiny sizes: its tables, its correctness gates, the parallel-form guard and
the written report. (The exponent fit itself is tested with the harness in test_measure.py.)"""

from __future__ import annotations

import math

import pytest
import torch

import attnlab.bench.castle as cb
import attnlab.bench.castle.memory as castle_memory
from attnlab.bench import BenchOptions, get_suite, write_results
from attnlab.cli import main

# 8 standard heads of 8 against heads_for_parity(8) = 5 CASTLE heads of 8: the 8 -> 5 rule, tiny sizes
TINY = dict(device="cpu", lengths=(16, 32), quick=True, d_model=64, n_heads=8, progress=False, budget_s=1.0)


@pytest.fixture(scope="module")
def result():
    return get_suite("castle").run(BenchOptions(**TINY))


def _table(res, prefix):
    (t,) = [t for t in res.tables if t.title.startswith(prefix)]
    return t


def test_tables_have_the_expected_columns_and_ok_rows(result):
    assert not result.failures
    assert [t.columns for t in result.tables] == [cb.TIME_COLUMNS, cb.MEMORY_COLUMNS, cb.GROWTH_COLUMNS,
                                                  cb.DECODE_COLUMNS, cb.DECODE_GROWTH_COLUMNS, cb.CACHE_COLUMNS,
                                                  cb.CHECK_COLUMNS]
    time_rows = _table(result, "(a)").rows
    assert [r["T"] for r in time_rows] == [16, 32]
    for r in time_rows:
        assert r["status"] == "ok" and r["castle impl"] == "chunked"
        assert r["castle fwd ms"] > 0 and r["standard fwd+bwd ms"] > 0
        assert r["fwd ratio"] == pytest.approx(r["castle fwd ms"] / r["standard fwd ms"])
        assert r["fwd+bwd ratio"] == pytest.approx(r["castle fwd+bwd ms"] / r["standard fwd+bwd ms"])
        assert r["met"] == ("yes" if max(r["fwd ratio"], r["fwd+bwd ratio"]) <= cb.TIME_TARGET else "NO")
    for r in _table(result, "(b)").rows:
        for k in ("castle", "parallel", "standard"):
            assert r[f"{k} fwd+bwd MiB"] > r[f"{k} fwd MiB"] > 0, (k, r)
    growth = {g["case"]: g for g in _table(result, "Growth").rows}
    assert set(growth) == {"castle (chunked)", "castle parallel (naive)", "standard"}
    # memory grows with T (here, at T <= the block size 64, even CASTLE's chunked form holds a T x T block)
    assert all(g["mem exp fwd+bwd"] > 0.5 for g in growth.values())
    assert math.isnan(growth["castle parallel (naive)"]["time exp fwd"])  # the naive form is not timed


def test_decode_and_cache_tables(result):
    dec = _table(result, "(c)").rows
    assert [r["context"] for r in dec] == [16, 32]  # quick mode: the smallest and largest length
    for r in dec:
        assert r["status"] == "ok" and r["castle ms/token"] > 0 and r["standard ms/token"] > 0
        assert r["ratio"] == pytest.approx(r["castle ms/token"] / r["standard ms/token"])
        lo, hi = map(int, r["contexts timed"].split(".."))
        assert r["context"] < lo <= hi
    growth = {g["case"]: g for g in _table(result, "Decode latency growth").rows}
    assert growth["castle"]["contexts"] == "16 -> 32" and growth["castle"]["growth"] > 0
    cache = _table(result, "Cache memory").rows
    # 4 D numbers per CASTLE head and token against 2 D per standard head: 4 * 5 / (2 * 8) at these sizes ...
    for r in cache[:2]:
        assert (r["standard heads"], r["castle heads"]) == (8, 5)
        assert r["ratio"] == pytest.approx(1.25) == r["expected 4 n_C / (2 n_std)"]
    # ... and the spec's 8/7 at exact parity (14 -> 8 heads)
    assert (cache[-1]["standard heads"], cache[-1]["castle heads"]) == (14, 8)
    assert cache[-1]["ratio"] == pytest.approx(8 / 7)


def test_correctness_checks_pass_and_notes_record_sizes_and_load(result):
    checks = _table(result, "Correctness").rows
    assert len(checks) == 5 and all(c["status"] == "ok" and c["max error"] <= c["tolerance"] for c in checks)
    text = "\n".join(result.notes)
    assert "heads_for_parity(8) = 5 heads x 8" in text and "load average" in text


def test_a_broken_castle_form_reports_the_failure_instead_of_a_speed(monkeypatch):
    import attnlab.ops.castle.api as api

    good = api.castle_chunked

    def broken(*args, **kwargs):
        return good(*args, **kwargs) + 1e-2  # small but far above the float32 tolerance

    monkeypatch.setattr(api, "castle_chunked", broken)
    res = get_suite("castle").run(BenchOptions(**{**TINY, "lengths": (16,)}))
    checks = {c["case"]: c["status"] for c in _table(res, "Correctness").rows}
    assert checks["castle layer (chunked) fwd+bwd (time table)"].startswith("FAILED correctness")
    assert checks["castle decode, UQ-KV cache (decode table)"].startswith("FAILED correctness")  # prefill is chunked
    assert checks["standard layer fwd+bwd (time table)"] == "ok"
    assert checks["castle parallel op (memory table)"] == "ok"
    (row,) = _table(res, "(a)").rows
    assert row["status"].startswith("FAILED correctness")
    assert "castle fwd ms" not in row and "fwd ratio" not in row and row["standard fwd ms"] > 0  # baseline still timed
    (mem,) = _table(res, "(b)").rows
    assert "castle fwd+bwd MiB" not in mem and mem["standard fwd+bwd MiB"] > 0
    assert all("castle ms/token" not in r for r in _table(res, "(c)").rows)
    assert res.failures


def test_a_broken_decode_step_fails_only_the_decode_table(monkeypatch):
    import attnlab.cache.uqkv as uqkv

    good = uqkv.decode_attend
    monkeypatch.setattr(uqkv, "decode_attend", lambda q, k, u, v, s: good(q, k, u, v, s) * 1.01)
    res = get_suite("castle").run(BenchOptions(**{**TINY, "lengths": (16,)}))
    assert all(r["status"].startswith("FAILED correctness") and "castle ms/token" not in r
               for r in _table(res, "(c)").rows)
    assert _table(res, "(a)").rows[0]["status"] == "ok"


def test_parallel_form_is_skipped_beyond_its_budget(monkeypatch):
    monkeypatch.setattr(castle_memory, "PARALLEL_CPU_BUDGET", 100e3)  # bytes: T=16 fits, T=64 does not
    res = get_suite("castle").run(BenchOptions(**{**TINY, "lengths": (16, 64)}))
    rows = _table(res, "(b)").rows
    assert isinstance(rows[0]["parallel fwd+bwd MiB"], float)
    assert rows[1]["parallel fwd+bwd MiB"].startswith("skipped: projected ")
    assert " GiB > budget " in rows[1]["parallel fwd+bwd MiB"] and "parallel fwd MiB" not in rows[1]
    assert rows[1]["castle fwd+bwd MiB"] > 0 and not res.failures  # a skip is not a failure


def test_guard_projects_from_the_fitted_growth():
    guard = castle_memory._parallel_guard
    opts = BenchOptions(**TINY)
    # 1 GiB at T=1024 growing quadratically -> 4 GiB at 2048 > the 2 GiB CPU budget
    assert "projected 4.0 GiB" in guard([(512, 2**28, 1e-3), (1024, 2**30, 2e-3)], 2048, opts)
    assert guard([(512, 2**20, 1e-3)], 1024, opts) is None
    # time: cubic from 0.5 s at 512 -> 4 s at 1024 > budget_s = 1
    assert "s per fwd+bwd > budget 1 s" in guard([(512, 2**20, 0.5)], 1024, opts)


def test_cli_writes_markdown_csv_and_three_plots(tmp_path, capsys):
    argv = ["bench", "castle", "--quick", "--lengths", "16,32", "--d-model", "32", "--n-heads", "4",
            "--budget", "1", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["castle-cpu-decode.png", "castle-cpu-memory.png", "castle-cpu-time.png", "castle-cpu.csv",
                     "castle-cpu.md"]
    md = (tmp_path / "castle-cpu.md").read_text()
    assert "attnlab bench castle --device cpu" in md and "## (c) Decode" in md and "castle-cpu-memory.png" in md
    header = (tmp_path / "castle-cpu.csv").read_text().splitlines()[0]
    assert header.split(",") == cb.TIME_COLUMNS


def test_plot_skips_what_was_not_measured(tmp_path, result):
    res = get_suite("castle").run(BenchOptions(**{**TINY, "lengths": (16,)}))
    for t in res.tables:
        for r in t.rows:
            r["status"] = "FAILED correctness: synthetic"
            for k in [k for k in r if k.endswith("MiB")]:
                del r[k]
    assert cb.plot_castle(res, tmp_path / "castle-cpu") == []
    paths = write_results(result, tmp_path, command="attnlab bench castle", force=True)
    assert len(paths) == 5 and all(p.exists() for p in paths)
