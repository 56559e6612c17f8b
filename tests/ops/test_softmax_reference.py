"""The reference softmax attention against independent oracles (float64, CPU).

* an explicit per-(b, h, i) Python loop that evaluates the mask predicate key by key and softmaxes only the
  visible keys (tolerance 1e-12: same math, different summation order);
* torch's own ``F.scaled_dot_product_attention`` on the plain cases (no mask, causal with T == S) (1e-12);
* dropout reproduced from the same seed with ``F.dropout`` on hand-built probabilities (exact up to 1e-12).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab import masks as M
from attnlab.masks import Mask
from attnlab.ops.softmax import GeneralScoreParams, softmax_attention

TOL = 1e-12


def loop_oracle(q, k, v, mask, q_offset, score_fn):
    """out[b, h, i] = sum over visible j of softmax_j(score(b, h, i, j)) v[b, h // G, j]; zeros if none visible."""
    B, H, T, _ = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    rows = []
    for b in range(B):
        heads = []
        for h in range(H):
            outs = []
            for i in range(T):
                vis = [
                    j for j in range(S)
                    if mask is None or bool(mask(torch.tensor(b), torch.tensor(h), torch.tensor(q_offset + i), torch.tensor(j)))
                ]
                if not vis:
                    outs.append(torch.zeros(v.shape[-1], dtype=v.dtype))
                    continue
                s = torch.stack([score_fn(b, h, i, j) for j in vis])  # (n_vis,)
                p = torch.softmax(s, dim=0)
                outs.append((p[:, None] * v[b, h // G, vis]).sum(0))
            heads.append(torch.stack(outs))
        rows.append(torch.stack(heads))
    return torch.stack(rows)  # (B, H, T, Dv)


MASKS = {
    "causal": M.causal(),
    "sliding_window": M.sliding_window(2),
    "strided_bi": M.strided(2, causal=False),
    "bigbird_per_head": M.bigbird(1, 1, 1, seed=2, n_heads=2),
    "prefix_lm": M.prefix_lm(2),
    "document_batch": M.document(torch.tensor([[0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 1, 2, 2, 2]])),
    "empty_rows": Mask(name="no_row_3", fn=lambda b, h, q, kv: (kv <= q) & (q != 3)),
    "none": None,
}


@pytest.mark.parametrize("mask_name", list(MASKS))
@pytest.mark.parametrize("size", [(4, 7, 3), (7, 7, 0)], ids=["cross_T4_S7_off3", "self_T7"])
def test_reference_matches_loop_oracle_outputs_and_grads(mask_name: str, size) -> None:
    T, S, off = size
    mask = MASKS[mask_name]
    B, H, Hkv, D = 2, 2, 1, 3
    q = torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, Hkv, S, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, Hkv, S, 2, dtype=torch.float64, requires_grad=True)
    out = softmax_attention(q, k, v, mask=mask, q_offset=off, impl="reference")
    want = loop_oracle(q, k, v, mask, off, lambda b, h, i, j: (q[b, h, i] * k[b, 0, j]).sum() / math.sqrt(D))
    torch.testing.assert_close(out, want, atol=TOL, rtol=TOL)
    go = torch.randn_like(out)
    g = torch.autograd.grad(out, [q, k, v], go)
    gw = torch.autograd.grad(want, [q, k, v], go)
    for a, b in zip(g, gw):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=TOL, rtol=TOL)


def test_reference_general_and_additive_match_loop_oracle() -> None:
    from attnlab.ops.softmax import AdditiveScoreParams

    B, H, T, S, D, A = 1, 2, 4, 5, 3, 4
    q = torch.randn(B, H, T, D, dtype=torch.float64)
    k = torch.randn(B, H, S, D, dtype=torch.float64)
    v = torch.randn(B, H, S, 2, dtype=torch.float64)
    W = torch.randn(H, D, D, dtype=torch.float64)
    out = softmax_attention(q, k, v, mask=M.causal(), q_offset=1, score="general",
                            score_params=GeneralScoreParams(weight=W), impl="reference")
    want = loop_oracle(q, k, v, M.causal(), 1, lambda b, h, i, j: q[b, h, i] @ W[h] @ k[b, h, j])
    torch.testing.assert_close(out, want, atol=TOL, rtol=TOL)

    wq, wk, va = (torch.randn(H, D, A, dtype=torch.float64), torch.randn(H, D, A, dtype=torch.float64),
                  torch.randn(H, A, dtype=torch.float64))
    out = softmax_attention(q, k, v, mask=M.causal(), q_offset=1, score="additive", scale=0.5,
                            score_params=AdditiveScoreParams(w_q=wq, w_k=wk, v=va), impl="reference")
    want = loop_oracle(q, k, v, M.causal(), 1,
                       lambda b, h, i, j: 0.5 * va[h] @ torch.tanh(q[b, h, i] @ wq[h] + k[b, h, j] @ wk[h]))
    torch.testing.assert_close(out, want, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("T", [1, 7, 13, 63])
@pytest.mark.parametrize("causal", [False, True])
def test_reference_matches_torch_sdpa_plain(T: int, causal: bool) -> None:
    q = torch.randn(2, 3, T, 12, dtype=torch.float64)
    k = torch.randn(2, 3, T, 12, dtype=torch.float64)
    v = torch.randn(2, 3, T, 7, dtype=torch.float64)
    out = softmax_attention(q, k, v, mask=M.causal() if causal else None, impl="reference")
    want = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, want, atol=TOL, rtol=TOL)
    out_dot = softmax_attention(q, k, v, mask=M.bidirectional(), score="dot", impl="reference")
    torch.testing.assert_close(out_dot, F.scaled_dot_product_attention(q, k, v, scale=1.0), atol=TOL, rtol=TOL)


def test_reference_dropout_is_f_dropout_on_probabilities() -> None:
    B, H, T, S, p = 2, 2, 5, 5, 0.4
    q = torch.randn(B, H, T, 4, dtype=torch.float64)
    k = torch.randn(B, H, S, 4, dtype=torch.float64)
    v = torch.randn(B, H, S, 3, dtype=torch.float64)
    mask = Mask(name="no_row_1", fn=lambda b, h, q, kv: (kv <= q) & (q != 1))
    allowed = M.dense(mask, T, S)
    s = (q @ k.transpose(-1, -2) / 2.0).masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(s, -1).nan_to_num(0.0)  # (B, H, T, S), row 1 all zero
    torch.manual_seed(123)
    want = F.dropout(probs, p=p, training=True) @ v
    torch.manual_seed(123)
    out = softmax_attention(q, k, v, mask=mask, dropout_p=p, impl="reference")
    torch.testing.assert_close(out, want, atol=TOL, rtol=TOL)
    assert not torch.allclose(out, softmax_attention(q, k, v, mask=mask, impl="reference"))
    assert (out[:, :, 1] == 0).all()


def test_reference_empty_rows_zero_with_finite_zero_grads() -> None:
    q = torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    mask = Mask(name="no_rows_0_4", fn=lambda b, h, q, kv: (kv <= q) & (q != 0) & (q != 4))
    out = softmax_attention(q, k, v, mask=mask, impl="reference")
    assert (out[:, :, [0, 4]] == 0).all() and torch.isfinite(out).all()
    out.square().sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[:, :, [0, 4]] == 0).all()


def test_causal_output_unchanged_when_future_perturbed() -> None:
    q = torch.randn(1, 2, 9, 4, dtype=torch.float64)
    k = torch.randn(1, 2, 9, 4, dtype=torch.float64)
    v = torch.randn(1, 2, 9, 4, dtype=torch.float64)
    for impl in ("reference", "sdpa"):
        a = softmax_attention(q, k, v, mask=M.causal(), impl=impl)
        k2, v2 = k.clone(), v.clone()
        k2[:, :, 5:] += 1.0
        v2[:, :, 5:] -= 2.0
        b = softmax_attention(q, k2, v2, mask=M.causal(), impl=impl)
        torch.testing.assert_close(a[:, :, :5], b[:, :, :5], atol=TOL, rtol=TOL)
        assert not torch.allclose(a[:, :, 5:], b[:, :, 5:])
