"""KVCache / SlidingKVCache: contents, absolute positions, memory bounds, validation (tensor level).

Layer-level decoding equivalence lives in tests/layers/test_mha_decode.py.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import masks
from attnlab.cache import AttentionCache
from attnlab.cache.kv import KVCache, SlidingKVCache, shifted_mask

B, H, D = 2, 3, 5
F64 = torch.float64


def _kv(T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, D, generator=g, dtype=F64), torch.randn(B, H, T, D, generator=g, dtype=F64))


def test_interface() -> None:
    assert issubclass(KVCache, AttentionCache) and issubclass(SlidingKVCache, AttentionCache)


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.integers(1, 9), min_size=1, max_size=8))
def test_kv_cache_returns_everything_in_order(chunks: list[int]) -> None:
    k_full, v_full = _kv(sum(chunks))
    c = KVCache(B, H, D, dtype=F64, capacity=2)
    n = 0
    for T in chunks:
        k, v, start = c.update(k_full[:, :, n:n + T], v_full[:, :, n:n + T])
        n += T
        assert start == 0 and c.seq_len == n
        # exact copies: equality, not closeness
        assert torch.equal(k, k_full[:, :, :n]) and torch.equal(v, v_full[:, :, :n])
        assert c.capacity >= n


def test_kv_cache_capacity_doubles() -> None:
    c = KVCache(B, H, D, dtype=F64, capacity=4)
    assert c.memory_bytes() == 0 and c.capacity == 0  # lazy allocation
    caps = []
    for t in range(37):
        k, v = _kv(1, seed=t)
        c.update(k, v)
        caps.append(c.capacity)
    # 4, 8, 16, 32, 64: log2 reallocations, never a growth by one
    assert sorted(set(caps)) == [4, 8, 16, 32, 64]
    assert c.memory_bytes() == 2 * B * H * 64 * D * 8


def test_kv_cache_reset_reuses_storage() -> None:
    c = KVCache(B, H, D, dtype=F64)
    c.update(*_kv(5))
    mem = c.memory_bytes()
    c.reset()
    assert c.seq_len == 0 and c.memory_bytes() == mem
    k2, v2 = _kv(3, seed=1)
    k, v, _ = c.update(k2, v2)
    assert torch.equal(k, k2) and torch.equal(v, v2)


def test_kv_cache_grad_path_matches_concatenation() -> None:
    """Keys that require grad: out-of-place storage, gradients equal those of a plain torch.cat."""
    k_full, v_full = _kv(6)
    k_full.requires_grad_(True)
    v_full.requires_grad_(True)
    c = KVCache(B, H, D, dtype=F64)
    total = 0
    for a, b in ((0, 2), (2, 3), (3, 6)):
        k, v, _ = c.update(k_full[:, :, a:b], v_full[:, :, a:b])
        total = total + (k * v).sum() * b
    total.backward()
    gk, gv = k_full.grad.clone(), v_full.grad.clone()
    # expected: position p appears in steps whose end > p, weight = sum of those ends
    w = torch.tensor([2 + 3 + 6, 2 + 3 + 6, 3 + 6, 6, 6, 6], dtype=F64).view(1, 1, 6, 1)
    assert torch.allclose(gk, v_full.detach() * w, atol=1e-12)  # exact up to rounding
    assert torch.allclose(gv, k_full.detach() * w, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(window=st.integers(1, 6), chunks=st.lists(st.integers(1, 8), min_size=1, max_size=8))
def test_sliding_cache_returns_visible_suffix_with_absolute_start(window: int, chunks: list[int]) -> None:
    k_full, v_full = _kv(sum(chunks))
    c = SlidingKVCache(window, B, H, D, dtype=F64)
    n = 0
    for T in chunks:
        k, v, start = c.update(k_full[:, :, n:n + T], v_full[:, :, n:n + T])
        # the first new query (position n) sees n - window + 1 .. n: older keys are dropped
        assert start == max(0, n - (window - 1))
        assert torch.equal(k, k_full[:, :, start:n + T]) and torch.equal(v, v_full[:, :, start:n + T])
        n += T
        assert c.seq_len == n and c.kept == min(n, window)
        kk, vv = c.keys_values()
        assert torch.equal(kk, k_full[:, :, n - c.kept:n]) and torch.equal(vv, v_full[:, :, n - c.kept:n])


def test_sliding_cache_memory_is_bounded() -> None:
    window = 4
    c = SlidingKVCache(window, B, H, D, dtype=F64)
    mems = []
    for t in range(20):
        c.update(*_kv(1, seed=t))
        mems.append(c.memory_bytes())
    per_pos = 2 * B * H * D * 8
    assert mems[:window] == [per_pos * (t + 1) for t in range(window)]
    assert set(mems[window - 1:]) == {per_pos * window}  # constant once the window is full
    # a long prefill is also cut to the window (no view keeping the whole prefill alive)
    c.reset()
    c.update(*_kv(50))
    assert c.memory_bytes() == per_pos * window
    assert c._k is not None and c._k._base is None  # owns its storage


def test_shifted_mask_evaluates_absolute_positions() -> None:
    m = masks.sliding_window(3)
    sm = shifted_mask(m, 5)
    got = masks.dense(sm, 4, 6, q_offset=7)  # keys are absolute positions 5..10
    want = masks.dense(m, 4, 11, q_offset=7)[:, 5:]
    assert torch.equal(got, want)
    assert not sm.plain_causal and sm.window is None and sm.causal
    assert shifted_mask(m, 0) is m
    assert not shifted_mask(masks.causal(), 2).plain_causal  # SDPA's is_causal would be wrong here


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch_size=0, n_kv_heads=1, head_dim=2), "batch_size must be an int >= 1, got 0"),
    (dict(batch_size=1, n_kv_heads=0, head_dim=2), "n_kv_heads must be an int >= 1, got 0"),
    (dict(batch_size=1, n_kv_heads=1, head_dim=2, dtype=torch.int64), "floating-point"),
    (dict(batch_size=1, n_kv_heads=1, head_dim=2, capacity=0), "capacity must be an int >= 1"),
])
def test_kv_cache_bad_construction(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KVCache(**kwargs)


def test_sliding_cache_bad_window() -> None:
    with pytest.raises(ValueError, match="window must be an int >= 1, got 0"):
        SlidingKVCache(0, 1, 1, 2)


@pytest.mark.parametrize("cls", [KVCache, SlidingKVCache])
def test_bad_updates(cls: type) -> None:
    c = KVCache(B, H, D, dtype=F64) if cls is KVCache else SlidingKVCache(3, B, H, D, dtype=F64)
    k, v = _kv(2)
    with pytest.raises(ValueError, match=r"k must have shape \(B, H_kv, T, D\) = \(2, 3, T, 5\), got \(2, 2, 2, 5\)"):
        c.update(k[:, :2], v)
    with pytest.raises(ValueError, match=r"v must have shape"):
        c.update(k, v[:, :, :1])
    with pytest.raises(ValueError, match="cache dtype torch.float64"):
        c.update(k.float(), v.float())
    with pytest.raises(ValueError, match="must be tensors"):
        c.update(k, None)  # type: ignore[arg-type]
    assert c.seq_len == 0  # nothing was stored by a refused update
    with pytest.raises(ValueError, match=r"cache holds \(batch_size, n_kv_heads, head_dim, v_head_dim\)"):
        c.check_compatible(batch_size=1, n_kv_heads=H, head_dim=D, v_head_dim=D, dtype=F64,
                           device=torch.device("cpu"))
    with pytest.raises(ValueError, match="cache dtype is torch.float64"):
        c.check_compatible(batch_size=B, n_kv_heads=H, head_dim=D, v_head_dim=D, dtype=torch.float32,
                           device=torch.device("cpu"))
