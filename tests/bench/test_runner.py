"""bench.runner.run_suites: typed arguments, refusals before anything is measured, the written reports."""

from __future__ import annotations

import pytest

from attnlab.bench import BenchOptions, Suite, SuiteResult, Table
from attnlab.bench.core import SUITES
from attnlab.bench.runner import run_suites


def _plugin(monkeypatch, status: str = "ok") -> list[BenchOptions]:
    seen: list[BenchOptions] = []

    def run(options: BenchOptions) -> SuiteResult:
        seen.append(options)
        return SuiteResult(suite="runner-test", options=options,
                           tables=[Table(title="t", columns=["case", "status"], rows=[{"case": "a", "status": status}])])

    monkeypatch.setitem(SUITES.entries, "runner-test", Suite(name="runner-test", description="d", run=run))
    return seen


def test_runs_writes_and_echoes(monkeypatch, tmp_path):
    seen = _plugin(monkeypatch)
    lines: list[str] = []
    status, paths = run_suites(["runner-test"], BenchOptions(), tmp_path, command="attnlab bench runner-test",
                               echo=lines.append)
    assert status == 0 and len(seen) == 1
    assert [p.name for p in paths] == ["runner-test-cpu.md", "runner-test-cpu.csv"]
    assert lines[0] == "== runner-test (cpu) ==" and lines[-1] == f"  wrote {paths[-1]}"
    assert "`attnlab bench runner-test`" in paths[0].read_text()


def test_a_failed_case_gives_status_1(monkeypatch, tmp_path):
    _plugin(monkeypatch, status="FAILED correctness: max error 1 > tolerance 0")
    lines: list[str] = []
    status, _ = run_suites(["runner-test"], BenchOptions(), tmp_path, command="c", echo=lines.append)
    assert status == 1 and any(line.startswith("  FAILED a T=None: FAILED correctness") for line in lines)


def test_refuses_unknown_suites_and_existing_reports_before_measuring(monkeypatch, tmp_path):
    seen = _plugin(monkeypatch)
    with pytest.raises(ValueError, match=r"^unknown benchmark suites 'nope', 'nada'; registered: "):
        run_suites(["nope", "runner-test", "nada"], BenchOptions(), tmp_path, command="c")
    (tmp_path / "runner-test-cpu-extra.png").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"runner-test-cpu-extra\.png already exist\(s\); pass --force"):
        run_suites(["runner-test"], BenchOptions(), tmp_path, command="c")
    assert seen == []  # nothing was measured
    status, _ = run_suites(["runner-test"], BenchOptions(), tmp_path, command="c", force=True)
    assert status == 0 and len(seen) == 1


def test_options_refuse_unknown_mechanisms():
    with pytest.raises(ValueError, match=r"^unknown mechanism 'nope'; registered: "):
        BenchOptions(mechanisms=("standard", "nope"))
