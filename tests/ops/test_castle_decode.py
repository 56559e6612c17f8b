"""CASTLE decoding with the UQ-KV cache == parallel form (spec section 7.1 invariant 3), functional and cached."""

from __future__ import annotations

import pytest
import torch

from attnlab.cache import AttentionCache
from attnlab.cache.uqkv import UQKVCache
from attnlab.ops.castle import castle_decode_step, castle_parallel, castle_prefill, lookahead_keys, lookahead_keys_at
from attnlab.ops.castle.parallel import lookahead_gate

F64 = torch.float64
LOOKAHEADS = [None, 0, 1, 3, 5, 12, 20]


def _inputs(T: int, *, B: int = 2, H: int = 3, D: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g, dtype=F64) for _ in range(6)]


def _tok(xs: list[torch.Tensor], i: int) -> list[torch.Tensor]:
    return [x[:, :, i : i + 1] for x in xs]


@pytest.mark.parametrize("lookahead", LOOKAHEADS)
def test_functional_decode_from_scratch_and_after_prefill(lookahead: int | None) -> None:
    T = 13
    xs = _inputs(T)
    want = castle_parallel(*xs, lookahead=lookahead)
    state, outs = None, []
    for i in range(T):
        o, state = castle_decode_step(*_tok(xs, i), state, lookahead=lookahead)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, dim=2), want, atol=1e-12, rtol=0)  # fp64, eq. 13 is exact
    torch.testing.assert_close(state.u, lookahead_keys_at(*xs[:3], T - 1, lookahead=lookahead), atol=1e-12, rtol=0)
    keep = T if lookahead is None else min(T, lookahead)
    assert state.q_u.shape[2] == keep  # SWL keeps only the last W rows of Q^U
    torch.testing.assert_close(state.q_u, xs[0][:, :, T - keep :], atol=0, rtol=0)
    for m in (1, 4, 12):
        out, state = castle_prefill(*[x[:, :, :m] for x in xs], lookahead=lookahead, impl="chunked", chunk_size=3)
        outs = [out]
        for i in range(m, T):
            o, state = castle_decode_step(*_tok(xs, i), state, lookahead=lookahead)
            outs.append(o)
        torch.testing.assert_close(torch.cat(outs, dim=2), want, atol=1e-12, rtol=0)  # fp64
        torch.testing.assert_close(state.u, lookahead_keys_at(*xs[:3], T - 1, lookahead=lookahead), atol=1e-12, rtol=0)


@pytest.mark.parametrize("lookahead", [None, 0, 2, 7])
@pytest.mark.parametrize("block", [1, 4, 5, 64])
def test_blockwise_lookahead_keys_equal_gate_times_values(lookahead: int | None, block: int) -> None:
    xs = _inputs(17)
    want = lookahead_gate(xs[0], xs[1], lookahead=lookahead) @ xs[2]  # U^L = sigmoid(Q^U K^U^T / sqrt(d) + M^U) V^U
    torch.testing.assert_close(lookahead_keys(*xs[:3], lookahead=lookahead, chunk_size=block), want, atol=1e-13, rtol=0)


@pytest.mark.parametrize("lookahead", LOOKAHEADS)
@pytest.mark.parametrize("prefill", [0, 1, 6])
def test_uqkv_cache_matches_parallel(lookahead: int | None, prefill: int) -> None:
    T = 15
    xs = _inputs(T, seed=1)
    want = castle_parallel(*xs, lookahead=lookahead)
    cache = UQKVCache(2, 3, 4, lookahead=lookahead, dtype=F64, capacity=2)
    assert isinstance(cache, AttentionCache)
    outs = []
    if prefill:
        outs.append(cache.extend(*[x[:, :, :prefill] for x in xs], impl="parallel"))
    for i in range(prefill, T):
        outs.append(cache.step(*_tok(xs, i)))
        assert cache.seq_len == i + 1
    torch.testing.assert_close(torch.cat(outs, dim=2), want, atol=1e-12, rtol=0)  # fp64
    st = cache.state()
    torch.testing.assert_close(st.u, lookahead_keys_at(*xs[:3], T - 1, lookahead=lookahead), atol=1e-12, rtol=0)
    keep = T if lookahead is None else min(T, lookahead)
    torch.testing.assert_close(st.q_u, xs[0][:, :, T - keep :], atol=0, rtol=0)
    torch.testing.assert_close(st.k_c, xs[4], atol=0, rtol=0)
    torch.testing.assert_close(st.v_c, xs[5], atol=0, rtol=0)


def test_uqkv_cache_extend_in_chunks_and_growth() -> None:
    T = 20
    xs = _inputs(T, seed=2)
    want = castle_parallel(*xs, lookahead=4)
    cache = UQKVCache(2, 3, 4, lookahead=4, dtype=F64, capacity=1)
    outs = [cache.extend(*[x[:, :, a:b] for x in xs]) for a, b in ((0, 7), (7, 9), (9, 10), (10, 20))]
    torch.testing.assert_close(torch.cat(outs, dim=2), want, atol=1e-12, rtol=0)  # fp64
    assert cache.capacity == 32  # 7 -> 8 (doubling from 1), then 16, then 32: no per-token reallocation
    elem = 8  # float64
    # U, K^C, V^C at capacity 32 plus a 2W-row buffer of Q^U
    assert cache.memory_bytes() == (3 * 32 + 2 * 4) * 2 * 3 * 4 * elem
    cache.reset()
    assert cache.seq_len == 0 and cache.memory_bytes() == 0
    out = cache.extend(*xs)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)  # reset really forgets


def test_uqkv_cache_full_keeps_all_q_rows_and_grows_amortised() -> None:
    xs = _inputs(40, B=1, H=1, D=2, seed=3)
    cache = UQKVCache(1, 1, 2, dtype=F64, capacity=4)
    caps = []
    with torch.no_grad():
        for i in range(40):
            cache.step(*_tok(xs, i))
            caps.append(cache.capacity)
    assert sorted(set(caps)) == [4, 8, 16, 32, 64]
    assert cache.state().q_u.shape[2] == 40
    assert cache.memory_bytes() == 4 * 64 * 2 * 8


def test_uqkv_cache_autograd_path_matches_and_backprops() -> None:
    xs = [x.requires_grad_() for x in _inputs(6, B=1, H=2, D=4, seed=4)]
    want = castle_parallel(*xs, lookahead=2)
    cache = UQKVCache(1, 2, 4, lookahead=2, dtype=F64)
    out = torch.cat([cache.extend(*[x[:, :, :3] for x in xs])] + [cache.step(*_tok(xs, i)) for i in range(3, 6)], 2)
    torch.testing.assert_close(out, want, atol=1e-12, rtol=0)  # fp64
    go = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(out, xs, go), torch.autograd.grad(want, xs, go)):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=0)  # fp64 autograd through decode vs parallel


def test_uqkv_cache_rejects_mismatches() -> None:
    cache = UQKVCache(2, 3, 4, lookahead=2, dtype=F64)
    xs = _inputs(1)
    with pytest.raises(ValueError, match=r"cache holds \(batch_size, n_heads, head_dim\)=\(2, 3, 4\)"):
        cache.step(*_inputs(1, B=1))
    with pytest.raises(ValueError, match="cache dtype is torch.float64"):
        cache.step(*[x.float() for x in xs])
    with pytest.raises(ValueError, match=r"step takes one token"):
        cache.step(*_inputs(2))
    cache.step(*xs)
    with pytest.raises(ValueError, match="prefill needs an empty cache, but seq_len=1"):
        cache.prefill(*_inputs(3))
    with pytest.raises(ValueError, match="lookahead must be None or an int >= 0, got lookahead=-1"):
        UQKVCache(1, 1, 1, lookahead=-1)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        UQKVCache(0, 1, 1)


def test_decode_step_rejects_bad_state() -> None:
    xs = _inputs(1)
    _, state = castle_decode_step(*xs, None, lookahead=None)
    with pytest.raises(ValueError, match=r"state.q_u must have shape \(2, 3, 0, 4\) for lookahead=0"):
        castle_decode_step(*xs, state, lookahead=0)  # built with lookahead=None: 1 row of Q^U kept, W=0 keeps none
    with pytest.raises(ValueError, match="castle_decode_step takes one token"):
        castle_decode_step(*_inputs(2), None)
    # a state of another dtype used to reach the matmuls (RuntimeError there); now a ValueError naming it
    f32 = type(state)(*(x.float() for x in state))
    with pytest.raises(ValueError, match=r"state.u must have the dtype of q_u \(torch.float64\), got torch.float32"):
        castle_decode_step(*xs, f32, lookahead=None)
    meta = type(state)(*(x.to("meta") for x in state))
    with pytest.raises(ValueError, match=r"state.u must be on the device of q_u \(cpu\), got meta"):
        castle_decode_step(*xs, meta, lookahead=None)
