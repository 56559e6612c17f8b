"""SDPA backend == reference, for outputs and gradients, over every mask, GQA/MQA and cross-attention.

All in float64 on CPU; tolerance 1e-10 (both sides are exact math up to summation order, observed ~1e-15).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import masks as M
from attnlab.masks import Mask
from attnlab.ops.softmax import GeneralScoreParams, softmax_attention

ATOL = 1e-10
RTOL = 1e-10
B = 2

# (T, S, q_offset): self-attention at awkward sizes, decoding-like cross attention (rows at the end of the keys),
# cross attention with T < S and T > S from position 0, a single decoding step.
SIZES = [(1, 1, 0), (7, 7, 0), (13, 13, 0), (63, 63, 0), (5, 13, 8), (7, 13, 2), (13, 7, 0), (1, 9, 8)]
HEADS = [(4, 4), (4, 2), (4, 1)]  # MHA, GQA, MQA
# every size with one head layout, cycling, so each mask meets every size and every head layout (kept small for time)
CASES = [(size, HEADS[i % len(HEADS)]) for i, size in enumerate(SIZES)]


def make_mask(name: str, T: int, S: int, q_offset: int, n_heads: int) -> Mask:
    L = max(q_offset + T, S)
    g = torch.Generator().manual_seed(L)
    ids_t = torch.sort(torch.randint(0, 3, (L,), generator=g)).values  # (L,) shared by the batch
    ids_bt = torch.sort(torch.randint(0, 4, (B, L), generator=g), dim=1).values  # (B, L) per example
    return {
        "causal": lambda: M.causal(),
        "bidirectional": lambda: M.bidirectional(),
        "sliding_window": lambda: M.sliding_window(3),
        "sliding_window_bi": lambda: M.sliding_window(2, causal=False),
        "strided": lambda: M.strided(3),
        "strided_bi": lambda: M.strided(4, causal=False),
        "fixed": lambda: M.fixed(4, 2),
        "fixed_bi": lambda: M.fixed(3, 1, causal=False),
        "bigbird": lambda: M.bigbird(2, 1, 2, seed=7),
        "bigbird_per_head": lambda: M.bigbird(2, 1, 2, seed=3, n_heads=n_heads),
        "bigbird_bi": lambda: M.bigbird(2, 1, 2, seed=5, causal=False, kv_len=S),
        "prefix_lm": lambda: M.prefix_lm(3),
        "document_causal": lambda: M.document(ids_t) & M.causal(),
        "document_batch": lambda: M.document(ids_bt),
        "and_masks": lambda: M.and_masks(M.sliding_window(5), M.strided(2)),
        "or_masks": lambda: M.or_masks(M.sliding_window(2), M.prefix_lm(2)),
        # rows 2 and 5 see nothing: exercises the "fully masked rows -> zeros" rule
        "empty_rows": lambda: Mask(name="causal_without_rows_2_5", fn=lambda b, h, q, kv: (kv <= q) & (q != 2) & (q != 5)),
    }[name]()


MASKS = [
    "causal", "bidirectional", "sliding_window", "sliding_window_bi", "strided", "strided_bi", "fixed", "fixed_bi",
    "bigbird", "bigbird_per_head", "bigbird_bi", "prefix_lm", "document_causal", "document_batch", "and_masks",
    "or_masks", "empty_rows",
]


def qkv(T: int, S: int, H: int, Hkv: int, D: int = 12, Dv: int = 5):
    q = torch.randn(B, H, T, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(B, Hkv, S, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, Hkv, S, Dv, dtype=torch.float64, requires_grad=True)
    return q, k, v


def run_with_grads(impl: str, q, k, v, extra: list[torch.Tensor], grad_out: torch.Tensor, **kw):
    out = softmax_attention(q, k, v, impl=impl, **kw)
    grads = torch.autograd.grad(out, [q, k, v, *extra], grad_out)
    return out, grads


def case_id(c) -> str:
    (T, S, off), (H, Hkv) = c
    return f"T{T}_S{S}_off{off}_H{H}_Hkv{Hkv}"


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("mask_name", MASKS)
def test_sdpa_matches_reference(mask_name: str, case) -> None:
    size, heads = case
    T, S, off = size
    H, Hkv = heads
    mask = make_mask(mask_name, T, S, off, H)
    q, k, v = qkv(T, S, H, Hkv)
    go = torch.randn(B, H, T, 5, dtype=torch.float64)
    ref, gref = run_with_grads("reference", q, k, v, [], go, mask=mask, q_offset=off)
    out, gout = run_with_grads("sdpa", q, k, v, [], go, mask=mask, q_offset=off)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    for name, a, b in zip("qkv", gout, gref):
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=f"grad {name}")


@pytest.mark.parametrize("score", ["dot", "general"])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
def test_sdpa_scores_match_reference(score: str, heads) -> None:
    T, S, off = 7, 13, 6
    H, Hkv = heads
    mask = M.sliding_window(4)
    q, k, v = qkv(T, S, H, Hkv)
    extra: list[torch.Tensor] = []
    kw: dict = {"mask": mask, "q_offset": off, "score": score, "scale": 0.7}
    if score == "general":
        w = (torch.randn(H, 12, 12, dtype=torch.float64) / 12**0.5).requires_grad_()
        kw["score_params"] = GeneralScoreParams(weight=w)
        extra = [w]
    go = torch.randn(B, H, T, 5, dtype=torch.float64)
    ref, gref = run_with_grads("reference", q, k, v, extra, go, **kw)
    out, gout = run_with_grads("sdpa", q, k, v, extra, go, **kw)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_sdpa_plain_causal_offset_is_not_top_left() -> None:
    """With q_offset > 0 the causal mask is bottom-aligned; SDPA's is_causal (top-left) would be wrong."""
    T, S = 4, 10
    q, k, v = qkv(T, S, 2, 2)
    out = softmax_attention(q, k, v, mask=M.causal(), q_offset=S - T, impl="sdpa")
    full = softmax_attention(q, k, v, mask=None, impl="sdpa")
    # the last query row (position S-1) sees every key, so it equals unmasked attention
    torch.testing.assert_close(out[:, :, -1], full[:, :, -1], atol=ATOL, rtol=RTOL)
    # and the first row (position S-T) does not
    assert not torch.allclose(out[:, :, 0], full[:, :, 0])


def test_sdpa_dropout_is_unbiased_and_keeps_empty_rows_zero() -> None:
    """Inverted dropout: the mean over many independent draws approaches the dropout-free output.

    2000 draws in one call (batch axis); per-element std of the mean <= max|v| * sqrt(p/(1-p)) / sqrt(2000) ~ 0.05
    for |v| <= 3, so atol=0.2 is > 4 sigma while a wrong rescaling (factor 1-p = 0.7 off) would be far outside.
    """
    n, H, T, S, p = 2000, 1, 6, 6, 0.3
    mask = make_mask("empty_rows", T, S, 0, H)
    q1 = torch.randn(1, H, T, 8, dtype=torch.float64)
    k1 = torch.randn(1, H, S, 8, dtype=torch.float64)
    v1 = torch.randn(1, H, S, 4, dtype=torch.float64).clamp(-3, 3)
    q, k, v = (t.expand(n, -1, -1, -1).contiguous() for t in (q1, k1, v1))
    base = softmax_attention(q1, k1, v1, mask=mask, impl="sdpa")
    out = softmax_attention(q, k, v, mask=mask, impl="sdpa", dropout_p=p)
    assert torch.isfinite(out).all()
    assert (out[:, :, [2, 5]] == 0).all()
    assert not torch.allclose(out[0], out[1])  # it did drop something
    torch.testing.assert_close(out.mean(0, keepdim=True), base, atol=0.2, rtol=0)
    # and, tighter, element by element against the measured standard error of the mean: within 6 standard errors
    # (the 24 elements of this seed stay below 1.5); a missing 1/(1-p) rescaling is up to ~44 standard errors off
    mean, se = out.mean(0, keepdim=True), out.std(0, keepdim=True) / n**0.5
    assert ((mean - base).abs() <= 6 * se + 1e-12).all()
    assert ((mean * (1 - p) - base).abs() > 6 * se).any()  # the bound does detect the classic rescaling bug


def test_sdpa_empty_rows_zero_output_and_grad() -> None:
    T = S = 7
    q, k, v = qkv(T, S, 2, 2)
    out = softmax_attention(q, k, v, mask=make_mask("empty_rows", T, S, 0, 2), impl="sdpa")
    assert (out[:, :, [2, 5]] == 0).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all() and torch.isfinite(v.grad).all()
    assert (q.grad[:, :, [2, 5]] == 0).all()


def test_sdpa_all_rows_masked() -> None:
    q, k, v = qkv(3, 4, 2, 1)
    nothing = Mask(name="nothing", fn=lambda b, h, q, kv: (q - kv) > 100)
    for impl in ("reference", "sdpa"):
        out = softmax_attention(q, k, v, mask=nothing, impl=impl)
        assert (out == 0).all(), impl


@settings(max_examples=20, deadline=None)
@given(T=st.integers(1, 20), S=st.integers(1, 20), off=st.integers(0, 10), w=st.integers(1, 6),
       kind=st.sampled_from(["sliding_window", "strided", "fixed", "prefix_lm"]))
def test_sdpa_matches_reference_property(T: int, S: int, off: int, w: int, kind: str) -> None:
    mask = {"sliding_window": M.sliding_window(w), "strided": M.strided(w), "fixed": M.fixed(w, 1),
            "prefix_lm": M.prefix_lm(w)}[kind]
    q, k, v = qkv(T, S, 4, 2)
    go = torch.randn(B, 4, T, 5, dtype=torch.float64)
    ref, gref = run_with_grads("reference", q, k, v, [], go, mask=mask, q_offset=off)
    out, gout = run_with_grads("sdpa", q, k, v, [], go, mask=mask, q_offset=off)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    for a, b in zip(gout, gref):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.gpu
@pytest.mark.parametrize("mask_name", ["causal", "empty_rows", "bigbird_per_head", "document_batch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sdpa_cuda_matches_reference(mask_name: str, dtype: torch.dtype) -> None:
    """CUDA SDPA kernels (flash/efficient) vs the float64 reference; empty rows must be zeros, never NaN.

    Tolerances: float32 2e-4; bfloat16 5e-2 (bf16 outputs and gradients carry ~2^-8 relative rounding).
    """
    tol = 2e-4 if dtype == torch.float32 else 5e-2
    T, S, off, H, Hkv = 37, 64, 27, 4, 2
    mask = make_mask(mask_name, T, S, off, H)
    q = torch.randn(B, H, T, 64, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(B, Hkv, S, 64, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(B, Hkv, S, 64, device="cuda", dtype=dtype, requires_grad=True)
    go = torch.randn(B, H, T, 64, device="cuda", dtype=dtype)
    out, g = run_with_grads("sdpa", q, k, v, [], go, mask=mask, q_offset=off)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, gref = run_with_grads("reference", q64, k64, v64, [], go.double(), mask=mask, q_offset=off)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)
    for a, b in zip(g, gref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, atol=tol, rtol=tol)
