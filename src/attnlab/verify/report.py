"""Verification results as a table and as counts: what ``attnlab verify`` and ``attnlab demo`` print."""

from __future__ import annotations

import math
from dataclasses import dataclass

from attnlab.verify.core import CheckResult

__all__ = ["RESULT_COLUMNS", "verdict", "result_rows", "Tally"]

RESULT_COLUMNS = ["check", "mechanism", "case", "max error", "tolerance", "result", "detail"]


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2e}"


def verdict(result: CheckResult) -> str:
    """``"skip"`` (could not run here), ``"pass"`` or ``"FAIL"``."""
    return "skip" if result.skipped else ("pass" if result.passed else "FAIL")


def result_rows(results: list[CheckResult], *, failures_only: bool = False) -> list[list[str]]:
    """One row of :data:`RESULT_COLUMNS` per result (only the failed ones with ``failures_only``); a tolerance
    that is a lower bound reads ``>= tol``."""
    rows = []
    for r in results:
        if failures_only and (r.passed or r.skipped):
            continue
        tol = f">= {_fmt(r.tolerance)}" if r.at_least else _fmt(r.tolerance)
        rows.append([r.check, r.mechanism, r.case, _fmt(r.max_error), tol, verdict(r), r.detail])
    return rows


@dataclass(frozen=True)
class Tally:
    """How many cases passed, failed and were skipped (could not run on this device: they verified nothing)."""

    cases: int
    passed: int
    failed: int
    skipped: int
    mechanisms: int

    @classmethod
    def of(cls, results: list[CheckResult]) -> Tally:
        skipped = sum(r.skipped for r in results)
        failed = sum(not r.passed and not r.skipped for r in results)
        return cls(cases=len(results), passed=len(results) - failed - skipped, failed=failed, skipped=skipped,
                   mechanisms=len({r.mechanism for r in results}))
