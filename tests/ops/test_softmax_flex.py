"""FlexAttention backend.

CPU tier: torch 2.13 runs FlexAttention eagerly on CPU for the **forward pass only** (no CPU backward), so the
CPU tests compare forward outputs with the reference in float64 (tolerance 1e-10; observed exact), check the
BlockMask itself (every block holding a visible entry is kept, every empty block skipped) and check that a
CPU call needing gradients raises a clear ValueError. Gradients are compared in the GPU tier (compiled kernel,
float32, tolerances written there).
"""

from __future__ import annotations

import pytest
import torch

from attnlab import masks as M
from attnlab.masks import Mask
from attnlab.ops.softmax import GeneralScoreParams, softmax_attention
from attnlab.ops.softmax.args import SoftmaxArgs
from attnlab.ops.softmax.flex import block_mask_for, clear_block_mask_cache, flex_softmax_attention

ATOL = RTOL = 1e-10
B = 2


def make_mask(name: str, T: int, S: int, q_offset: int, n_heads: int) -> Mask:
    L = max(q_offset + T, S)
    g = torch.Generator().manual_seed(L)
    ids_t = torch.sort(torch.randint(0, 3, (L,), generator=g)).values  # (L,)
    ids_bt = torch.sort(torch.randint(0, 4, (B, L), generator=g), dim=1).values  # (B, L)
    return {
        "causal": lambda: M.causal(),
        "bidirectional": lambda: M.bidirectional(),
        "sliding_window": lambda: M.sliding_window(3),
        "sliding_window_bi": lambda: M.sliding_window(2, causal=False),
        "strided": lambda: M.strided(3),
        "fixed": lambda: M.fixed(4, 2),
        "bigbird": lambda: M.bigbird(2, 1, 2, seed=7),
        "bigbird_per_head": lambda: M.bigbird(2, 1, 2, seed=3, n_heads=n_heads),
        "bigbird_bi": lambda: M.bigbird(2, 1, 2, seed=5, causal=False, kv_len=S),
        "prefix_lm": lambda: M.prefix_lm(3),
        "document_causal": lambda: M.document(ids_t) & M.causal(),
        "document_batch": lambda: M.document(ids_bt),
        "or_masks": lambda: M.or_masks(M.sliding_window(2), M.prefix_lm(2)),
        "empty_rows": lambda: Mask(name="causal_without_rows_2_5", fn=lambda b, h, q, kv: (kv <= q) & (q != 2) & (q != 5)),
    }[name]()


MASKS = [
    "causal", "bidirectional", "sliding_window", "sliding_window_bi", "strided", "fixed", "bigbird",
    "bigbird_per_head", "bigbird_bi", "prefix_lm", "document_causal", "document_batch", "or_masks", "empty_rows",
]
# (T, S, q_offset, H, H_kv)
CASES = [(13, 13, 0, 4, 2), (5, 13, 8, 4, 1), (13, 7, 0, 4, 4)]


def qkv(T, S, H, Hkv, D=12, Dv=5, dtype=torch.float64, device="cpu", requires_grad=False):
    mk = lambda *s: torch.randn(*s, dtype=dtype, device=device, requires_grad=requires_grad)  # noqa: E731
    return mk(B, H, T, D), mk(B, Hkv, S, D), mk(B, Hkv, S, Dv)


# each mask with two of the three cases, cycling (eager FlexAttention re-traces the mask per call: keep it small)
PAIRS = [(m, CASES[(i + j) % len(CASES)]) for i, m in enumerate(MASKS) for j in range(2)]


@pytest.mark.parametrize(("mask_name", "case"), PAIRS,
                         ids=[f"{m}-T{c[0]}_S{c[1]}_off{c[2]}_H{c[3]}_Hkv{c[4]}" for m, c in PAIRS])
def test_flex_forward_matches_reference_cpu(mask_name: str, case) -> None:
    T, S, off, H, Hkv = case
    mask = make_mask(mask_name, T, S, off, H)
    q, k, v = qkv(T, S, H, Hkv)
    ref = softmax_attention(q, k, v, mask=mask, q_offset=off, impl="reference")
    out = softmax_attention(q, k, v, mask=mask, q_offset=off, impl="flex")
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("mask_name", ["sliding_window", "strided", "bigbird_per_head", "document_batch", "empty_rows"])
def test_flex_small_blocks_skip_empty_blocks_cpu(mask_name: str) -> None:
    """With 4x4 blocks the sparse masks really skip blocks; the result is unchanged."""
    T, S, off, H = 13, 21, 8, 4
    mask = make_mask(mask_name, T, S, off, H)
    q, k, v = qkv(T, S, H, 2)
    ref = softmax_attention(q, k, v, mask=mask, q_offset=off, impl="reference")
    out = flex_softmax_attention(q, k, v, SoftmaxArgs(mask=mask, scale=12**-0.5, score="scaled_dot", q_offset=off),
                                 flex_block=4)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("mask_name", ["sliding_window", "fixed", "bigbird_per_head", "document_batch", "causal"])
@pytest.mark.parametrize("q_offset", [0, 5])
def test_block_mask_keeps_exactly_the_nonempty_blocks(mask_name: str, q_offset: int) -> None:
    T, S, H, bs = 13, 18, 4, 4
    mask = make_mask(mask_name, T, S, q_offset, H)
    bm = block_mask_for(mask, batch_size=B, n_heads=H, q_len=T, kv_len=S, q_offset=q_offset, flex_block=bs)
    dense = M.dense(mask, T, S, batch_size=B, n_heads=H, q_offset=q_offset)  # (B, H, T, S)
    nq, nk = -(-T // bs), -(-S // bs)
    padded = torch.zeros(B, H, nq * bs, nk * bs, dtype=torch.bool)
    padded[:, :, :T, :S] = dense
    want = padded.view(B, H, nq, bs, nk, bs).any(dim=(3, 5))  # (B, H, nq, nk): block holds a visible entry
    got = bm.to_dense().to(torch.bool)  # (B or 1, H or 1, nq, nk)
    assert torch.equal(got.expand_as(want), want)
    assert not want.all() or mask_name == "causal"  # the sparse cases do skip blocks


def test_block_mask_cache_hits_and_distinguishes() -> None:
    clear_block_mask_cache()
    m = M.sliding_window(3)
    a = block_mask_for(m, batch_size=1, n_heads=1, q_len=9, kv_len=9, q_offset=0, flex_block=4)
    assert block_mask_for(m, batch_size=1, n_heads=1, q_len=9, kv_len=9, q_offset=0, flex_block=4) is a
    assert block_mask_for(m, batch_size=1, n_heads=1, q_len=9, kv_len=9, q_offset=1, flex_block=4) is not a
    assert block_mask_for(M.sliding_window(3), batch_size=1, n_heads=1, q_len=9, kv_len=9, flex_block=4) is not a
    assert block_mask_for(m, batch_size=1, n_heads=1, q_len=9, kv_len=9, q_offset=0, flex_block=8) is not a
    with pytest.raises(ValueError, match="flex_block must be an int >= 1, got 0"):
        block_mask_for(m, batch_size=1, n_heads=1, q_len=9, kv_len=9, flex_block=0)


def test_flex_general_and_dot_scores_cpu() -> None:
    T, S, off, H = 7, 11, 4, 4
    q, k, v = qkv(T, S, H, 2)
    w = torch.randn(H, 12, 12, dtype=torch.float64) / 12**0.5
    for kw in ({"score": "dot", "scale": 0.3}, {"score": "general", "score_params": GeneralScoreParams(weight=w)}):
        ref = softmax_attention(q, k, v, mask=M.strided(3), q_offset=off, impl="reference", **kw)
        out = softmax_attention(q, k, v, mask=M.strided(3), q_offset=off, impl="flex", **kw)
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)


def test_flex_empty_rows_are_zero_cpu() -> None:
    q, k, v = qkv(7, 7, 2, 2)
    out = softmax_attention(q, k, v, mask=make_mask("empty_rows", 7, 7, 0, 2), impl="flex")
    assert (out[:, :, [2, 5]] == 0).all() and torch.isfinite(out).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only limitation")
def test_flex_cpu_backward_raises_clear_error() -> None:
    q, k, v = qkv(5, 5, 2, 2, requires_grad=True)
    with pytest.raises(ValueError, match=r"impl='flex' has no backward pass on CPU"):
        softmax_attention(q, k, v, mask=M.causal(), impl="flex")
    with torch.no_grad():  # forward-only is fine
        softmax_attention(q, k, v, mask=M.causal(), impl="flex")


def test_flex_rejects_additive_and_dropout() -> None:
    from attnlab.ops.softmax import AdditiveScoreParams

    q, k, v = qkv(5, 5, 2, 2)
    with pytest.raises(ValueError, match=r"impl='flex' does not support dropout, got dropout_p=0.1"):
        softmax_attention(q, k, v, impl="flex", dropout_p=0.1)
    params = AdditiveScoreParams(w_q=torch.zeros(2, 12, 3, dtype=torch.float64),
                                 w_k=torch.zeros(2, 12, 3, dtype=torch.float64), v=torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"impl='flex' does not support score='additive'; it supports"):
        softmax_attention(q, k, v, impl="flex", score="additive", score_params=params)
    # the backend function itself refuses too (it is importable and callable without the public validation)
    with pytest.raises(ValueError, match=r"impl='flex' does not support score='additive'"):
        flex_softmax_attention(q, k, v, SoftmaxArgs(mask=None, scale=1.0, score="additive", score_params=params))


# ----------------------------------------------------------------------------------------------------- GPU tier
@pytest.mark.gpu
@pytest.mark.parametrize("mask_name", ["causal", "sliding_window", "strided", "bigbird_per_head", "document_batch",
                                       "empty_rows", "bidirectional"])
@pytest.mark.parametrize("case", [(64, 64, 0, 4, 2), (37, 200, 163, 4, 1), (200, 200, 0, 4, 4)])
def test_flex_cuda_matches_reference_with_grads(mask_name: str, case) -> None:
    """Compiled FlexAttention on CUDA vs the float64 reference: float32, atol/rtol 2e-4 (fp32 accumulation)."""
    T, S, off, H, Hkv = case
    mask = make_mask(mask_name, T, S, off, H)
    q, k, v = qkv(T, S, H, Hkv, D=64, Dv=64, dtype=torch.float32, device="cuda", requires_grad=True)
    go = torch.randn(B, H, T, 64, device="cuda")
    out = softmax_attention(q, k, v, mask=mask, q_offset=off, impl="flex")
    g = torch.autograd.grad(out, [q, k, v], go)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = softmax_attention(q64, k64, v64, mask=mask, q_offset=off, impl="reference")
    gref = torch.autograd.grad(ref, [q64, k64, v64], go.double())
    torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=2e-4)
    for a, b in zip(g, gref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, atol=2e-4, rtol=2e-4)


@pytest.mark.gpu
def test_auto_picks_flex_on_cuda_for_sparse_masks() -> None:
    from attnlab.ops.softmax import resolve_impl

    dev = torch.device("cuda")
    assert resolve_impl("auto", device=dev, mask=M.sliding_window(4), score="scaled_dot", dropout_p=0.0) == "flex"


def test_compiled_flex_raises_the_recompile_limit_and_never_lowers_it(monkeypatch):
    # Each mask function is a new graph of the one compiled flex_attention; at dynamo's default limit of 8 the
    # ninth mask fell back to the eager, unfused FlexAttention on an H200 (the sparsity suite stalled).
    from attnlab.ops.softmax import flex as flex_mod

    cfg = torch._dynamo.config
    monkeypatch.setattr(flex_mod, "_compiled", None)
    with cfg.patch(recompile_limit=8):  # (dynamo's config module: patched with its own context manager)
        fn = flex_mod.compiled_flex()  # torch.compile is lazy: nothing is compiled until the first call
        assert cfg.recompile_limit == flex_mod.FLEX_RECOMPILE_LIMIT >= 64
        assert flex_mod.compiled_flex() is fn  # one compiled FlexAttention per process
    with cfg.patch(recompile_limit=1000):
        flex_mod.raise_recompile_limit()
        assert cfg.recompile_limit == 1000  # a user's higher limit is kept
