"""The CASTLE checks pass on castle and castle-swl, and fail when the implementation they guard is broken."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import attnlab.cache.uqkv as uqkv
import attnlab.ops.castle.api as castle_api
import attnlab.verify.castle as vcastle
from attnlab.layers.registry import get
from attnlab.verify import VerifyOptions, checks, run_check

CASTLE_CHECKS = ["castle-forms", "castle-decode", "castle-reductions", "castle-structure", "castle-params"]
MECHANISMS = ["castle", "castle-swl"]


def _check(name: str):
    return next(c for c in checks() if c.name == name)


def _failed(check: str, mechanism: str, spec=None, opts: VerifyOptions | None = None) -> list:
    results = run_check(_check(check), spec or get(mechanism), opts or VerifyOptions())
    assert results
    # a case that cannot run here (the Triton kernels without CUDA or the interpreter) is a visible skip
    return [r for r in results if not r.passed and not r.skipped]


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("check", CASTLE_CHECKS)
def test_castle_check_passes(check: str, mechanism: str) -> None:
    spec = get(mechanism)
    assert _check(check).applies(spec)
    results = run_check(_check(check), spec, VerifyOptions())
    failed = [r for r in results if not r.passed and not r.skipped]  # skipped: cannot run here (visible)
    assert not failed, failed
    assert any(r.passed for r in results), results


def test_castle_checks_apply_only_to_castle() -> None:
    for check in CASTLE_CHECKS:
        for other in ("standard", "linear"):
            try:
                spec = get(other)
            except ValueError:
                continue  # not registered in this checkout
            assert not _check(check).applies(spec)


def test_swl_check_really_uses_a_window() -> None:
    layer = vcastle._build(get("castle-swl"), VerifyOptions())
    assert layer.lookahead == 3 < VerifyOptions().seq_len - 1  # W=3 at T=13 masks something


def test_float32_run_passes_with_looser_tolerance() -> None:
    opts = VerifyOptions(dtype=torch.float32)
    assert not _failed("castle-forms", "castle", opts=opts)
    assert not _failed("castle-decode", "castle-swl", opts=opts)


# ---- the checks are not vacuous: each fails on a deliberately broken implementation ---------------------------


def test_forms_catches_a_wrong_chunked_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    real = castle_api.castle_chunked

    def broken(*xs, **kw):
        out = real(*xs, **kw)
        return out + 1e-6 * (xs[0] * xs[0].detach()).sum(-1, keepdim=True)  # tiny value and gradient error

    monkeypatch.setattr(castle_api, "castle_chunked", broken)
    failed = _failed("castle-forms", "castle")
    assert any("chunked" in r.case for r in failed)


def test_decode_catches_a_wrong_rank1_update(monkeypatch: pytest.MonkeyPatch) -> None:
    real = uqkv.lookahead_update
    monkeypatch.setattr(uqkv, "lookahead_update", lambda *a: 1.01 * real(*a))
    assert _failed("castle-decode", "castle-swl")


def test_reductions_catch_a_lookahead_off_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    real = castle_api.castle_chunked

    def broken(*xs, lookahead=None, **kw):
        return real(*xs, lookahead=None if lookahead is None else lookahead + 1, **kw)

    monkeypatch.setattr(castle_api, "castle_chunked", broken)
    failed = _failed("castle-reductions", "castle")
    assert any("W=0" in r.case and "chunked" in r.case for r in failed)


def test_structure_catches_a_diagonal_lookahead_term(monkeypatch: pytest.MonkeyPatch) -> None:
    real = vcastle.lookahead_scores
    monkeypatch.setattr(vcastle, "lookahead_scores", lambda *a, **k: real(*a, **k) + 1e-3)
    failed = _failed("castle-structure", "castle")
    assert any("strictly lower" in r.case for r in failed)


def test_params_catches_a_wrong_parity_rule() -> None:
    spec = dataclasses.replace(get("castle"), heads_for_parity=lambda n: n // 2)
    failed = _failed("castle-params", "castle", spec=spec)
    assert any("heads_for_parity(16)" in r.case for r in failed)


def test_forms_reports_a_backend_that_cannot_run_here_as_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # as on a CUDA machine verifying on CPU: "triton" is listed but has no interpreter here; it must appear as a
    # skipped case, not vanish from the results
    from attnlab.verify.generic import is_skipped

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    spec = dataclasses.replace(get("castle"), backends=("reference", "parallel", "chunked", "triton"))
    results = run_check(_check("castle-forms"), spec, VerifyOptions())
    (triton,) = [r for r in results if r.case == "layer impl=triton vs parallel"]
    assert is_skipped(triton) and not triton.passed and "TRITON_INTERPRET" in triton.detail
    assert all(r.passed for r in results if not r.skipped)


_TRITON_FORMS_SCRIPT = r"""
from attnlab.layers.registry import get
from attnlab.verify import VerifyOptions, checks, run_check
check = next(c for c in checks() if c.name == "castle-forms")
for name in ("castle", "castle-swl"):
    res = [r for r in run_check(check, get(name), VerifyOptions()) if r.case.startswith("triton")]
    assert len(res) == 1 and res[0].passed and not res[0].skipped, res
    print(name, res[0].case, res[0].max_error)
"""


def test_castle_forms_verifies_the_triton_kernels_under_the_interpreter():
    """With TRITON_INTERPRET=1 (set before triton is imported: a fresh process), castle-forms runs the Triton
    forward and backward against Theorem 1 on CPU and they pass; without it the case is a visible skip."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", _TRITON_FORMS_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.count("triton vs parallel") == 2
