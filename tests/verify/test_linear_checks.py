"""The linear-attention checks pass on the registered mechanisms, cover what they claim, and can fail."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import attnlab.ops.linear.api as linear_api
from attnlab.ops.linear import LinearState
from attnlab.layers import get
from attnlab.verify import VerifyOptions, applicable, checks, run_check
from attnlab.verify.linear import TOL_FORMS, TOL_SEGMENTED
from attnlab.verify.toys import toy_spec

MECHS = ("linear", "linear-relu", "based")


def _check(name: str):
    return {c.name: c for c in checks()}[name]


@pytest.mark.parametrize("mech", MECHS)
def test_checks_apply_and_pass(mech: str) -> None:
    spec = get(mech)
    names = {c.name for c in applicable(spec)}
    assert {"linear-segmented-state", "linear-forms-agree"} <= names
    seg = run_check(_check("linear-segmented-state"), spec)
    assert all(r.passed for r in seg), [r for r in seg if not r.passed]
    cases = {r.case for r in seg}
    for form in ("recurrent", "parallel", "chunked"):  # every form, op and layer level
        assert f"op {form} cut=6" in cases and f"layer {form} cut=6" in cases
    assert all(r.tolerance == TOL_SEGMENTED == 1e-10 for r in seg)
    forms = run_check(_check("linear-forms-agree"), spec)
    assert all(r.passed for r in forms), [r for r in forms if not r.passed]
    cases = {r.case for r in forms}
    for mode in ("causal", "bidirectional"):  # non-divisor chunk sizes of T=13 included
        for c in (1, 4, 5, 13, 16):
            assert f"{mode} chunked chunk={c} vs recurrent" in cases
        assert f"{mode} parallel vs recurrent" in cases
    assert all(r.tolerance == TOL_FORMS for r in forms)


def test_checks_do_not_apply_elsewhere() -> None:
    spec = toy_spec("toy-lin-na")  # a KV-cache mechanism
    names = {c.name for c in applicable(spec)}
    assert not names & {"linear-segmented-state", "linear-forms-agree"}


def test_float32_run_uses_scaled_tolerance() -> None:
    res = run_check(_check("linear-forms-agree"), get("linear"), VerifyOptions(dtype=torch.float32))
    assert all(r.passed for r in res) and all(r.tolerance == 1e-4 for r in res)


def test_checks_fail_when_chunked_drops_the_initial_state(monkeypatch: pytest.MonkeyPatch) -> None:
    real = linear_api.linear_attention_chunked

    def broken(fq, fk, v, state, *, causal, eps, chunk_size):
        return real(fq, fk, v, LinearState.zeros(fq, v), causal=causal, eps=eps, chunk_size=chunk_size)

    monkeypatch.setattr(linear_api, "linear_attention_chunked", broken)
    seg = run_check(_check("linear-segmented-state"), get("linear"))
    failed = {r.case for r in seg if not r.passed}
    assert "op chunked cut=6" in failed and "layer chunked cut=6" in failed
    assert not any(c.startswith("op recurrent") or c.startswith("op parallel") for c in failed)
    forms = run_check(_check("linear-forms-agree"), get("linear"))
    assert {r.case for r in forms if not r.passed} == {r.case for r in forms if "chunked" in r.case}


def test_forms_agree_fails_on_a_gradient_only_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    # forward unchanged, gradient through v scaled by 2 in the parallel form: only gradients reveal it
    real = linear_api.linear_attention_parallel

    class Grad2(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 2 * g

    def broken(fq, fk, v, state, **kw):
        return real(fq, fk, Grad2.apply(v), state, **kw)

    monkeypatch.setattr(linear_api, "linear_attention_parallel", broken)
    forms = run_check(_check("linear-forms-agree"), get("linear"))
    bad = [r for r in forms if not r.passed]
    assert {r.case for r in bad} == {"causal parallel vs recurrent", "bidirectional parallel vs recurrent"}
    assert all(r.detail.startswith("worst: grad[") for r in bad)


def test_forms_agree_reports_a_non_linear_layer() -> None:
    spec = dataclasses.replace(toy_spec("toy-lin-fake"), cache="recurrent",
                               backends=("recurrent", "parallel", "chunked"))
    res = run_check(_check("linear-forms-agree"), spec)
    assert len(res) == 1 and not res[0].passed and "not a LinearAttention" in res[0].detail
