"""key_padding(valid) against a dense reference written with explicit loops.

Convention under test: key ``j`` of row ``b`` is visible to every query iff ``valid[b, j]`` (``j >= S``: padding);
the query position plays no part. Fully padded rows give zero attention output, never NaN.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import masks as M
from attnlab.ops.softmax import softmax_attention

F64 = torch.float64


def loop_dense(valid: torch.Tensor, B: int, T: int, S: int, q_offset: int = 0) -> torch.Tensor:
    out = torch.zeros(B, 1, T, S, dtype=torch.bool)
    rows = valid if valid.ndim == 2 else valid.expand(B, -1)
    for b in range(B):
        for r in range(T):
            for j in range(S):
                out[b, 0, r, j] = bool(j < rows.shape[1] and rows[b, j])
    return out


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 4), S=st.integers(1, 13), T=st.integers(1, 9), off=st.integers(0, 7), extra=st.integers(0, 3),
       seed=st.integers(0, 10**6))
def test_matches_loop_reference(B: int, S: int, T: int, off: int, extra: int, seed: int) -> None:
    """Random valid patterns (not only right padding), queries at any offset, and keys past S (padding)."""
    valid = torch.rand(B, S, generator=torch.Generator().manual_seed(seed)) < 0.6
    m = M.key_padding(valid)
    assert m.per_batch and not m.per_head and not m.causal and not m.full
    got = M.dense(m, T, S + extra, batch_size=B, n_heads=2, q_offset=off)
    want = loop_dense(valid, B, T, S + extra).expand(B, 2, T, S + extra)
    assert torch.equal(got, want)


def test_shared_row_and_name() -> None:
    valid = torch.tensor([True, True, False])
    m = M.key_padding(valid)
    assert not m.per_batch
    assert m.name == "key_padding(S=3, n_pad=1)"
    assert torch.equal(M.dense(m, 2, 4), torch.tensor([[True, True, False, False]] * 2))
    mb = M.key_padding(torch.tensor([[True, False], [True, True]]))
    assert mb.name == "key_padding(B=2, S=2, n_pad=1)"


def test_and_with_causal() -> None:
    valid = torch.tensor([[True, True, True, False, False], [True, True, True, True, True]])
    m = M.causal() & M.key_padding(valid)
    assert m.causal and m.per_batch and not m.plain_causal
    d = M.dense(m, 5, 5, batch_size=2)
    for b in range(2):
        for i in range(5):
            for j in range(5):
                assert bool(d[b, 0, i, j]) == (j <= i and bool(valid[b, j]))


def test_attention_with_padding_equals_attention_on_real_keys_only() -> None:
    """The mask's purpose: row b attends exactly as if its keys were cut to its real length (float64, 1e-12)."""
    g = torch.Generator().manual_seed(0)
    lengths = [5, 2, 7]
    B, H, T, S, D = 3, 2, 4, 7, 6
    q = torch.randn(B, H, T, D, generator=g, dtype=F64)
    k = torch.randn(B, H, S, D, generator=g, dtype=F64)
    v = torch.randn(B, H, S, D, generator=g, dtype=F64)
    valid = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)
    for impl in ("reference", "sdpa"):
        out = softmax_attention(q, k, v, mask=M.key_padding(valid), impl=impl)
        for b, n in enumerate(lengths):
            want = softmax_attention(q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n], impl="reference")
            assert (out[b:b + 1] - want).abs().max() < 1e-12


def test_fully_padded_row_gives_zeros() -> None:
    valid = torch.tensor([[True, False, False], [False, False, False]])
    q = torch.randn(2, 1, 2, 4, dtype=F64)
    k = torch.randn(2, 1, 3, 4, dtype=F64)
    v = torch.randn(2, 1, 3, 4, dtype=F64)
    for impl in ("reference", "sdpa"):
        out = softmax_attention(q, k, v, mask=M.key_padding(valid), impl=impl)
        assert torch.isfinite(out).all()
        assert out[1].abs().max() == 0


@pytest.mark.parametrize("valid, match", [
    (torch.tensor([[1, 0]]), r"valid must be a torch.bool tensor of shape \(B, S\) or \(S,\) with B, S >= 1, "
                             r"got torch.int64 \(1, 2\)"),
    (torch.ones(2, 2, 2, dtype=torch.bool), r"got torch.bool \(2, 2, 2\)"),
    (torch.ones(2, 0, dtype=torch.bool), r"got torch.bool \(2, 0\)"),
    ([True, False], r"valid must be a torch.bool tensor of shape \(B, S\) or \(S,\), got list"),
])
def test_bad_valid(valid, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        M.key_padding(valid)


def test_flex_forward_matches_reference() -> None:
    """FlexAttention (forward only on CPU) evaluates the predicate under vmap: same output as the reference."""
    g = torch.Generator().manual_seed(1)
    B, H, T, S, D = 2, 2, 5, 9, 8
    q, k, v = (torch.randn(B, H, n, D, generator=g, dtype=F64) for n in (T, S, S))
    valid = torch.arange(S)[None, :] < torch.tensor([[4], [9]])  # (B, S)
    m = M.key_padding(valid) & M.sliding_window(3, causal=False)
    with torch.no_grad():
        got = softmax_attention(q, k, v, mask=m, impl="flex")
        want = softmax_attention(q, k, v, mask=m, impl="reference")
    assert (got - want).abs().max() < 1e-10


# ------------------------------------------------------------------------------------------- Mask.key_valid
def test_key_valid_is_the_padding_and_survives_and() -> None:
    """``key_valid`` records the keys hidden from every query; ``&`` keeps it (AND), ``|`` only when both have it
    (OR); positions beyond an operand's S are padding. It agrees with the predicate: wherever it is False, no query
    sees the key."""
    valid = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    kp = M.key_padding(valid)
    assert torch.equal(kp.key_valid, valid)
    assert M.causal().key_valid is None

    both = M.causal() & kp
    assert torch.equal(both.key_valid, valid)
    shared = M.key_padding(torch.tensor([1, 0, 1, 1], dtype=torch.bool))  # (S,) shorter: key 4 is padding
    assert torch.equal((kp & shared).key_valid, torch.tensor([[1, 0, 1, 0, 0], [1, 0, 1, 1, 0]], dtype=torch.bool))
    assert (kp | M.causal()).key_valid is None  # causal hides nothing from every query
    assert torch.equal((kp | shared).key_valid, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], dtype=torch.bool))
    assert torch.equal((shared | shared).key_valid, torch.tensor([1, 0, 1, 1], dtype=torch.bool))

    for m in (kp, both, kp & shared, kp | shared):
        al = M.dense(m, 6, 5, batch_size=2, n_heads=1)  # (B, 1, T, S)
        seen = al.any(dim=2)[:, 0]  # (B, S): some query sees key j
        kv = m.key_valid if m.key_valid.ndim == 2 else m.key_valid.expand(2, -1)
        assert not (seen & ~kv).any(), m.name
