"""Numerics at the edges (issue 8, section 5).

* Half precision: the ``reference`` softmax backend and CASTLE's ``parallel`` and ``reference`` forms compute
  float16/bfloat16 in float32 and cast the result back. Oracle: the same form in float64 on the *same rounded*
  inputs, so that the tolerance measures the computation, not the rounding of the inputs. Tolerances: a few units
  of the output dtype's rounding (outputs are below ~4 in magnitude: float16 spacing there 2**-9 = 0.002,
  bfloat16 2**-6 = 0.016); computed in the input dtype the same cases give NaN (float16) or errors of 0.35-0.59
  (bfloat16), measured and written in the modules' docstrings.
* NaN and inf planted at masked-out key/value positions of the reference backend: visible outputs finite and equal
  to the clean run (exactly: the masked positions contribute exact zeros either way), and so are the gradients
  where no visible query sees the planted entry (a key-padding mask).
"""

from __future__ import annotations

import pytest
import torch

from attnlab.masks import causal, key_padding, sliding_window
from attnlab.ops.castle import castle_attention
from attnlab.ops.softmax import AdditiveScoreParams, GeneralScoreParams, softmax_attention
from attnlab.ops.softmax.args import SoftmaxArgs
from attnlab.ops.softmax.reference import reference_softmax_probs

HALF = [torch.float16, torch.bfloat16]
#: largest output error allowed against float64 on the same rounded inputs (outputs |o| < ~4)
OUT_TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _rounded(dtype: torch.dtype, *shape: int, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


# ---------------------------------------------------------------------------------------------- half precision
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("qk_scale", [1.0, 10.0, 100.0])
def test_reference_softmax_half_is_finite_and_close_to_float64(dtype: torch.dtype, qk_scale: float) -> None:
    B, H, T, D = 1, 2, 32, 16
    q = _rounded(dtype, B, H, T, D, scale=qk_scale, seed=1)
    k = _rounded(dtype, B, H, T, D, scale=qk_scale, seed=2)
    v = _rounded(dtype, B, H, T, D, seed=3)
    out = softmax_attention(q, k, v, mask=causal(), impl="reference")
    assert out.dtype == dtype
    assert torch.isfinite(out).all(), f"{int((~torch.isfinite(out)).sum())} non-finite outputs"
    want = softmax_attention(q.double(), k.double(), v.double(), mask=causal(), impl="reference")
    assert (out.double() - want).abs().max().item() <= OUT_TOL[dtype]


@pytest.mark.parametrize("dtype", HALF)
def test_reference_softmax_half_gradients_flow_back_in_the_input_dtype(dtype: torch.dtype) -> None:
    B, H, T, D = 2, 2, 9, 8
    leaves = [_rounded(dtype, B, H, T, D, scale=s, seed=i).requires_grad_() for i, s in enumerate((10.0, 10.0, 1.0))]
    go = _rounded(dtype, B, H, T, D, seed=7)
    softmax_attention(*leaves, mask=sliding_window(4), impl="reference").backward(go)
    ref = [x.detach().double().requires_grad_() for x in leaves]
    softmax_attention(*ref, mask=sliding_window(4), impl="reference").backward(go.double())
    for name, x, r in zip("qkv", leaves, ref):
        assert x.grad is not None and x.grad.dtype == dtype, name
        assert torch.isfinite(x.grad).all(), name
        # relative to the gradient's size: the float32 computation plus one rounding to the input dtype
        rel = ((x.grad.double() - r.grad).norm() / r.grad.norm()).item()
        assert rel <= {torch.float16: 2e-3, torch.bfloat16: 1.5e-2}[dtype], (name, rel)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("score", ["general", "additive"])
def test_reference_softmax_half_with_score_parameters(dtype: torch.dtype, score: str) -> None:
    B, H, T, D, A = 1, 2, 7, 4, 3
    q, k, v = (_rounded(dtype, B, H, T, D, scale=3.0, seed=i) for i in range(3))
    if score == "general":
        params = GeneralScoreParams(weight=_rounded(dtype, H, D, D, seed=4))
        params64 = GeneralScoreParams(weight=params.weight.double())
    else:
        params = AdditiveScoreParams(w_q=_rounded(dtype, H, D, A, seed=4), w_k=_rounded(dtype, H, D, A, seed=5),
                                     v=_rounded(dtype, H, A, seed=6))
        params64 = AdditiveScoreParams(w_q=params.w_q.double(), w_k=params.w_k.double(), v=params.v.double())
    out = softmax_attention(q, k, v, mask=causal(), score=score, score_params=params, impl="reference")
    want = softmax_attention(q.double(), k.double(), v.double(), mask=causal(), score=score, score_params=params64,
                             impl="reference")
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.double() - want).abs().max().item() <= OUT_TOL[dtype]


@pytest.mark.parametrize("dtype", HALF)
def test_reference_probs_half_are_float32_accurate_in_the_input_dtype(dtype: torch.dtype) -> None:
    q = _rounded(dtype, 1, 2, 16, 8, scale=100.0, seed=1)
    k = _rounded(dtype, 1, 2, 16, 8, scale=100.0, seed=2)
    args = SoftmaxArgs(mask=causal(), scale=8 ** -0.5, score="scaled_dot")
    p = reference_softmax_probs(q, k, args)
    assert p.dtype == dtype and torch.isfinite(p).all()
    want = reference_softmax_probs(q.double(), k.double(), args)
    assert (p.double() - want).abs().max().item() <= {torch.float16: 1e-3, torch.bfloat16: 4e-3}[dtype]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("impl", ["parallel", "reference"])
def test_castle_half_forms_are_close_to_float64_and_keep_the_dtype(dtype: torch.dtype, impl: str) -> None:
    B, H, T, D = 1, 2, 32, 16
    # the lookahead and causal queries/keys scaled by 10: in bfloat16 the T x T logits then lose the digits the
    # softmax needs (0.59 computed in bfloat16)
    xs = [_rounded(dtype, B, H, T, D, scale=10.0 if i in (0, 1, 3, 4) else 1.0, seed=i).requires_grad_()
          for i in range(6)]
    out = castle_attention(*xs, impl=impl, lookahead=5)
    xs64 = [x.detach().double().requires_grad_() for x in xs]
    want = castle_attention(*xs64, impl="parallel", lookahead=5)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.double() - want).abs().max().item() <= OUT_TOL[dtype]
    go = _rounded(dtype, B, H, T, D, seed=9)
    out.backward(go)
    want.backward(go.double())
    for i, (x, r) in enumerate(zip(xs, xs64)):
        assert x.grad is not None and x.grad.dtype == dtype and torch.isfinite(x.grad).all(), i
        rel = ((x.grad.double() - r.grad).norm() / r.grad.norm()).item()
        assert rel <= {torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype], (i, rel)


# ------------------------------------------------------------------------- NaN/inf at masked positions: reference
def _qkv(B: int = 2, H: int = 2, T: int = 8, D: int = 4, Hkv: int = 2):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, T, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, T, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, T, D, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["k", "v"])
@pytest.mark.parametrize("Hkv", [2, 1])
def test_reference_future_nan_does_not_reach_earlier_rows(bad: float, where: str, Hkv: int) -> None:
    """Causal: a non-finite key or value at position 5 leaves rows 0-4 exactly as in the clean run (before the fix
    a NaN value made rows 0-4 NaN: ``0 * NaN`` in ``p @ v``)."""
    q, k, v = _qkv(Hkv=Hkv)
    clean = softmax_attention(q, k, v, mask=causal(), impl="reference")
    k2, v2 = k.clone(), v.clone()
    (k2 if where == "k" else v2)[:, :, 5, 1] = bad
    out = softmax_attention(q, k2, v2, mask=causal(), impl="reference")
    assert torch.isfinite(out[:, :, :5]).all()
    assert torch.equal(out[:, :, :5], clean[:, :, :5])
    if where == "v":  # a visible non-finite value still propagates (rows 5.. see it)
        assert not torch.isfinite(out[:, :, 5:, 1]).any()


@pytest.mark.parametrize("score", ["scaled_dot", "general"])
@pytest.mark.parametrize("where", ["k", "v"])
def test_reference_padded_nan_leaves_outputs_and_gradients_clean(score: str, where: str) -> None:
    """Key padding hides positions 5.. of row 0 and 6.. of row 1 from every query: NaN planted there changes
    neither the outputs nor any gradient (the gradients of the planted positions are zero)."""
    q, k, v = _qkv()
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[0, 5:] = False
    valid[1, 6:] = False
    mask = key_padding(valid)
    H, D = q.shape[1], q.shape[3]
    w = torch.randn(H, D, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def run(k_in, v_in):
        leaves = [t.clone().requires_grad_() for t in (q, k_in, v_in, w)]
        params = GeneralScoreParams(weight=leaves[3]) if score == "general" else None
        out = softmax_attention(*leaves[:3], mask=mask, score=score, score_params=params, impl="reference")
        out.backward(torch.ones_like(out))
        return out.detach(), [t.grad for t in leaves]

    clean, clean_grads = run(k, v)
    k2, v2 = k.clone(), v.clone()
    t = k2 if where == "k" else v2
    t[0, :, 5:] = float("nan")
    t[1, :, 7, 0] = float("inf")
    out, grads = run(k2, v2)
    assert torch.equal(out, clean)
    names = ["q", "k", "v", "weight"] if score == "general" else ["q", "k", "v"]
    for name, g, cg in zip(names, grads, clean_grads):
        assert g is not None and torch.isfinite(g).all(), name
        if name in ("k", "v"):
            assert torch.equal(g[0, :, 5:], torch.zeros_like(g[0, :, 5:])), name
            assert torch.allclose(g[0, :, :5], cg[0, :, :5], rtol=0, atol=1e-12), name
        else:
            assert torch.allclose(g, cg, rtol=0, atol=1e-12), name


def test_reference_empty_rows_stay_zero_with_nan_values() -> None:
    """A row that sees no key is 0 even when every value is NaN (no ``0 * NaN``)."""
    q, k, v = _qkv(B=1)
    valid = torch.zeros(8, dtype=torch.bool)  # nothing visible at all
    out = softmax_attention(q, k, torch.full_like(v, float("nan")), mask=key_padding(valid), impl="reference")
    assert torch.equal(out, torch.zeros_like(out))


def test_reference_additive_masked_nan_key_leaves_outputs_clean() -> None:
    """Documented limit: with the additive score a masked non-finite key keeps the outputs clean (its score is
    replaced) but not the gradient of ``q`` (the custom score backward multiplies through it)."""
    q, k, v = _qkv(B=1)
    H, D, A = 2, 4, 3
    g = torch.Generator().manual_seed(5)
    params = AdditiveScoreParams(w_q=torch.randn(H, D, A, generator=g, dtype=torch.float64),
                                 w_k=torch.randn(H, D, A, generator=g, dtype=torch.float64),
                                 v=torch.randn(H, A, generator=g, dtype=torch.float64))
    clean = softmax_attention(q, k, v, mask=causal(), score="additive", score_params=params, impl="reference")
    k2 = k.clone()
    k2[:, :, 5, 0] = float("nan")
    out = softmax_attention(q, k2, v, mask=causal(), score="additive", score_params=params, impl="reference")
    assert torch.equal(out[:, :, :5], clean[:, :, :5])


def test_castle_reference_never_reads_the_future() -> None:
    """CASTLE's reference slices positions ``0..t`` for row ``t``: NaN in any input at position 5 leaves rows 0-4
    exactly as they were (the parallel and chunked forms leak through ``v^C`` and ``k^U``; documented)."""
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 2, 8, 4, generator=g, dtype=torch.float64) for _ in range(6)]
    clean = castle_attention(*xs, impl="reference")
    for i in range(6):
        ys = [x.clone() for x in xs]
        ys[i][:, :, 5] = float("nan")
        out = castle_attention(*ys, impl="reference")
        assert torch.equal(out[:, :, :5], clean[:, :, :5]), i
