"""benchmarks/decayed_forms.py: the quick preset checks every form against the reference before timing it, reports
a ratio to the reference timed in the same process, and never overwrites a results file."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("decayed_forms.py")


def test_quick_preset_checks_and_times_every_form(bench, tmp_path: Path) -> None:
    rows = bench.run(bench.QUICK_CASES, repeats=1)
    assert len(rows) == len(bench.QUICK_CASES) * len(bench.FORMS)
    for row in rows:
        assert row["max err f64"] <= 1e-10  # every form passed its float64 check, so every form was timed
        assert row["ms"] > 0 and row["× reference"] > 0
    text = bench.main(["--quick", "--repeats", "1", "--out", str(tmp_path / "r")])
    assert (tmp_path / "r" / "results.md").read_text() == text
    assert "| dense |" in text and "| banded |" in text
    with pytest.raises(SystemExit, match="exists"):
        bench.main(["--quick", "--repeats", "1", "--out", str(tmp_path / "r")])
    assert (tmp_path / "r" / "results.md").read_text() == text  # the first results survive


def test_a_form_that_disagrees_is_reported_not_timed(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    real = bench._call

    def broken(impl, window, inputs):
        out = real(impl, window, inputs)
        return [o + 1e-3 for o in out] if impl == "dense" else out

    monkeypatch.setattr(bench, "_call", broken)
    rows = bench.run(bench.QUICK_CASES[:1], repeats=1)
    dense = next(r for r in rows if r["form"] == "dense")
    assert dense["max err f64"] > 1e-4 and "ms" not in dense
    assert "failed check" in bench.table(rows)
