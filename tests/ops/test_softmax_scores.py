"""Score functions: chunked additive (Bahdanau) scores, general (Luong) scores, backend choice (float64, CPU)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import masks as M
from attnlab.ops.softmax import AdditiveScoreParams, GeneralScoreParams, resolve_impl, softmax_attention
from attnlab.ops.softmax.scores import _AdditiveScores, additive_chunk_rows, additive_scores

TOL = 1e-12


def naive_additive(q, k, wq, wk, va):
    """Unchunked Bahdanau score, written out: (B, H, T, S, A) tanh, then the v-contraction."""
    H, Hkv = q.shape[1], k.shape[1]
    kr = k.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
    qp = torch.einsum("bhtd,hda->bhta", q, wq)  # (B, H, T, A)
    kp = torch.einsum("bhsd,hda->bhsa", kr, wk)  # (B, H, S, A)
    return (torch.tanh(qp[:, :, :, None, :] + kp[:, :, None, :, :]) * va[None, :, None, None, :]).sum(-1)


def additive_inputs(B=2, H=4, Hkv=2, T=7, S=9, D=6, A=5):
    mk = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)  # noqa: E731
    return mk(B, H, T, D), mk(B, Hkv, S, D), mk(H, D, A), mk(H, D, A), mk(H, A)


@settings(max_examples=15, deadline=None)
@given(T=st.integers(1, 13), S=st.integers(1, 11), chunk=st.integers(1, 14), hkv=st.sampled_from([1, 2, 4]))
def test_additive_chunked_equals_naive_outputs_and_grads(T: int, S: int, chunk: int, hkv: int) -> None:
    q, k, wq, wk, va = additive_inputs(T=T, S=S, Hkv=hkv)
    p = AdditiveScoreParams(w_q=wq, w_k=wk, v=va)
    got = additive_scores(q, k, p, chunk_q=chunk)
    want = naive_additive(q, k, wq, wk, va)
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
    go = torch.randn_like(got)
    g1 = torch.autograd.grad(got, [q, k, wq, wk, va], go)
    g2 = torch.autograd.grad(want, [q, k, wq, wk, va], go)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


def test_additive_result_independent_of_chunk_size() -> None:
    q, k, wq, wk, va = additive_inputs(T=13)
    p = AdditiveScoreParams(w_q=wq, w_k=wk, v=va)
    outs = [additive_scores(q, k, p, chunk_q=c) for c in (1, 2, 5, 13, 100)]
    outs.append(additive_scores(q, k, p, budget_bytes=1))  # budget below one row -> chunk of 1
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=TOL, rtol=TOL)


def test_additive_chunk_rows_respects_budget() -> None:
    B, H, T, S, A, item = 2, 4, 1000, 512, 64, 4
    row = B * H * S * A * item
    assert additive_chunk_rows(B, H, T, S, A, item, 10 * row) == 10
    assert additive_chunk_rows(B, H, T, S, A, item, 10 * row + row - 1) == 10
    assert additive_chunk_rows(B, H, T, S, A, item, 1) == 1
    assert additive_chunk_rows(B, H, 7, S, A, item, 10**12) == 7


def test_additive_function_gradcheck() -> None:
    qp = torch.randn(1, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    kp = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    va = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: _AdditiveScores.apply(a, b, c, 2), (qp, kp, va))


def test_additive_attention_through_api_matches_naive() -> None:
    q, k, wq, wk, va = additive_inputs(T=7, S=7)
    v = torch.randn(2, 2, 7, 3, dtype=torch.float64, requires_grad=True)
    out = softmax_attention(q, k, v, mask=M.sliding_window(3), score="additive",
                            score_params=AdditiveScoreParams(w_q=wq, w_k=wk, v=va))
    s = naive_additive(q, k, wq, wk, va).masked_fill(~M.dense(M.sliding_window(3), 7, 7), float("-inf"))
    want = torch.softmax(s, -1) @ v.repeat_interleave(2, dim=1)
    torch.testing.assert_close(out, want, atol=TOL, rtol=TOL)
    go = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, [q, k, v, wq, wk, va], go),
                    torch.autograd.grad(want, [q, k, v, wq, wk, va], go)):
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


def test_general_score_is_query_projection() -> None:
    """general: q W k^T == (q W) k^T with scale 1 by default; grads w.r.t. W match the written-out form."""
    q = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    k = torch.randn(2, 3, 6, 4, dtype=torch.float64)
    v = torch.randn(2, 3, 6, 4, dtype=torch.float64)
    W = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    for impl in ("reference", "sdpa"):
        out = softmax_attention(q, k, v, score="general", score_params=GeneralScoreParams(weight=W), impl=impl)
        want = torch.softmax(torch.einsum("bhtd,hde,bhse->bhts", q, W, k), -1) @ v
        torch.testing.assert_close(out, want, atol=TOL, rtol=TOL)
        go = torch.randn_like(out)
        torch.testing.assert_close(torch.autograd.grad(out, W, go)[0], torch.autograd.grad(want, W, go)[0],
                                   atol=TOL, rtol=TOL)


def test_dot_and_scaled_dot_default_scales() -> None:
    q = torch.randn(1, 1, 3, 16, dtype=torch.float64)
    k = torch.randn(1, 1, 3, 16, dtype=torch.float64)
    v = torch.randn(1, 1, 3, 2, dtype=torch.float64)
    a = softmax_attention(q, k, v, score="dot")
    b = softmax_attention(q, k, v, score="scaled_dot", scale=1.0)
    c = softmax_attention(q * 4, k, v, score="scaled_dot")  # 1/sqrt(16) = 1/4
    torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)
    torch.testing.assert_close(a, c, atol=TOL, rtol=TOL)


def test_auto_backend_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    sw = M.sliding_window(4)
    assert resolve_impl("auto", device=cpu, mask=sw, score="scaled_dot", dropout_p=0.0) == "sdpa"
    assert resolve_impl("auto", device=cpu, mask=sw, score="additive", dropout_p=0.0) == "reference"
    assert resolve_impl("auto", device=cuda, mask=sw, score="general", dropout_p=0.0) == "flex"
    assert resolve_impl("auto", device=cuda, mask=M.causal(), score="scaled_dot", dropout_p=0.0) == "sdpa"
    assert resolve_impl("auto", device=cuda, mask=None, score="dot", dropout_p=0.0) == "sdpa"
    assert resolve_impl("auto", device=cuda, mask=sw, score="scaled_dot", dropout_p=0.1) == "sdpa"
    assert resolve_impl("auto", device=cuda, mask=sw, score="additive", dropout_p=0.0) == "reference"
    assert resolve_impl("flex", device=cpu, mask=None, score="dot", dropout_p=0.0) == "flex"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: GeneralScoreParams(weight=torch.zeros(2, 3, 4)), r"weight must have shape \(H, D, D\), got \(2, 3, 4\)"),
        (lambda: GeneralScoreParams(weight=torch.zeros(3, 3)), r"weight must have shape \(H, D, D\) \(3 dims\)"),
        (lambda: GeneralScoreParams(weight=torch.zeros(2, 3, 3, dtype=torch.long)), r"floating-point"),
        (lambda: AdditiveScoreParams(w_q=torch.zeros(2, 3, 4), w_k=torch.zeros(2, 3, 5), v=torch.zeros(2, 4)),
         r"w_k must have the shape of w_q \(2, 3, 4\)"),
        (lambda: AdditiveScoreParams(w_q=torch.zeros(2, 3, 4), w_k=torch.zeros(2, 3, 4), v=torch.zeros(2, 5)),
         r"v must have shape \(H, A\) = \(2, 4\), got \(2, 5\)"),
        (lambda: AdditiveScoreParams(w_q=[1.0], w_k=torch.zeros(2, 3, 4), v=torch.zeros(2, 4)), r"w_q must be a torch.Tensor"),
    ],
)
def test_score_params_validation(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_additive_chunk_q_validation() -> None:
    q, k, wq, wk, va = additive_inputs()
    with pytest.raises(ValueError, match=r"chunk_q must be an int >= 1, got 0"):
        additive_scores(q, k, AdditiveScoreParams(w_q=wq, w_k=wk, v=va), chunk_q=0)
