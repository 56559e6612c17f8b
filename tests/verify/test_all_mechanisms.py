"""Every applicable generic and mechanism-specific check over every registered mechanism must pass."""

from __future__ import annotations

import pytest

from attnlab.layers.registry import all_specs
from attnlab.verify import VerifyOptions, applicable, run_check
from attnlab.verify.generic import is_skipped

PAIRS = [(check, spec) for spec in all_specs() for check in applicable(spec)]


def _fmt(r) -> str:
    return f"  {r.check} | {r.mechanism} | {r.case}: max_error={r.max_error:.3g} tol={r.tolerance:.1g} {r.detail}"


@pytest.mark.parametrize("check,spec", PAIRS, ids=[f"{c.name}-{s.name}" for c, s in PAIRS])
def test_check_passes(check, spec):
    results = run_check(check, spec, VerifyOptions())
    failed = [r for r in results if not r.passed and not is_skipped(r)]
    assert not failed, "failed cases:\n" + "\n".join(_fmt(r) for r in failed)
    skipped = [r for r in results if is_skipped(r)]
    if skipped and len(skipped) == len(results):
        pytest.skip("; ".join(r.detail for r in skipped))


def test_some_mechanism_is_registered():
    # the parametrised test above would silently collect nothing otherwise
    assert all_specs(), "no mechanism registered"
