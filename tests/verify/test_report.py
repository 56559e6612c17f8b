"""verify.core.run_checks and verify.report: names refused up front, verdicts, lower-bound tolerances, counts."""

from __future__ import annotations

import pytest

from attnlab.verify import CheckResult, run_checks
from attnlab.verify.report import RESULT_COLUMNS, Tally, result_rows


def _r(check: str, mech: str, *, passed: bool, skipped: bool = False, at_least: bool = False) -> CheckResult:
    return CheckResult(check=check, mechanism=mech, case="c", max_error=float("nan") if skipped else 1e-3,
                       tolerance=1e-2, passed=passed, skipped=skipped, at_least=at_least)


def test_rows_verdicts_and_lower_bounds():
    results = [_r("a", "m1", passed=True), _r("b", "m1", passed=False), _r("c", "m2", passed=False, skipped=True),
               _r("sees", "m2", passed=False, at_least=True)]
    rows = result_rows(results)
    assert all(len(r) == len(RESULT_COLUMNS) for r in rows)
    assert [r[5] for r in rows] == ["pass", "FAIL", "skip", "FAIL"]
    assert rows[2][3] == "-" and rows[0][4] == "1.00e-02" and rows[3][4] == ">= 1.00e-02"
    assert [r[0] for r in result_rows(results, failures_only=True)] == ["b", "sees"]
    assert Tally.of(results) == Tally(cases=4, passed=1, failed=2, skipped=1, mechanisms=2)


def test_run_checks_refuses_unknown_names_before_running():
    with pytest.raises(ValueError, match=r"^unknown mechanism 'nope'; registered: "):
        run_checks(["nope"], progress=False)
    with pytest.raises(ValueError, match=r"^unknown checks 'x', 'y'; registered: "):
        run_checks(["standard"], only=["x", "causality-gradient", "y"], progress=False)


def test_run_checks_runs_only_the_named_checks():
    results = run_checks(["standard"], only=["batch-consistency"], progress=False)
    assert results and {r.check for r in results} == {"batch-consistency"} and all(r.passed for r in results)
