"""Cached decoding with MultiHeadAttention: prefill + token-by-token == parallel for every causal mask and for
prefix-LM (whose prefix must be prefilled in one call), with RoPE and GQA; the sliding cache stays bounded.

float64; TOL = 1e-12 (the same sums in a different order; observed ~1e-16).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import masks
from attnlab.cache.kv import KVCache, SlidingKVCache
from attnlab.layers.mha import MultiHeadAttention, MultiHeadAttentionConfig

F64 = torch.float64
TOL = 1e-12

CAUSAL_MASKS = {
    "causal": lambda: masks.causal(),
    "sliding": lambda: masks.sliding_window(4),
    "strided": lambda: masks.strided(3),
    "fixed": lambda: masks.fixed(4, 1),
    "bigbird": lambda: masks.bigbird(3, 1, 2, seed=1),
    "window1": lambda: masks.sliding_window(1),
}


def _layer(mask, *, impl: str = "reference", **kw) -> MultiHeadAttention:
    kw.setdefault("n_kv_heads", 2)
    kw.setdefault("rope", True)
    return MultiHeadAttentionConfig(d_model=24, n_heads=4, mask=mask, impl=impl, **kw).build().to(F64).eval()


def _x(T: int, B: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, 24, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _decode(layer: MultiHeadAttention, x: torch.Tensor, chunks: list[int]) -> tuple[torch.Tensor, object]:
    cache = layer.new_cache(x.shape[0])
    outs, n = [], 0
    for c in chunks:
        outs.append(layer(x[:, n:n + c], cache=cache))
        n += c
    assert cache.seq_len == n == x.shape[1]
    return torch.cat(outs, dim=1), cache


@pytest.mark.parametrize("impl, T", [("sdpa", 1), ("sdpa", 7), ("sdpa", 13), ("reference", 10)])
@pytest.mark.parametrize("name", list(CAUSAL_MASKS))
def test_prefill_then_decode_equals_parallel(impl: str, name: str, T: int) -> None:
    layer = _layer(CAUSAL_MASKS[name](), impl=impl)
    x = _x(T)
    with torch.no_grad():
        y = layer(x)
        for m in sorted({0, 1, T // 2, T - 1, T} & set(range(T + 1))):
            chunks = ([m] if m else []) + [1] * (T - m)
            got, cache = _decode(layer, x, chunks)
            assert (got - y).abs().max() < TOL, (name, m)
    expected = SlidingKVCache if CAUSAL_MASKS[name]().window is not None else KVCache
    assert type(cache) is expected


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(sorted(CAUSAL_MASKS)), chunks=st.lists(st.integers(1, 6), min_size=1, max_size=5),
       n_kv_heads=st.sampled_from([1, 4]), rope=st.booleans())
def test_any_chunking_equals_parallel(name: str, chunks: list[int], n_kv_heads: int, rope: bool) -> None:
    layer = _layer(CAUSAL_MASKS[name](), n_kv_heads=n_kv_heads, rope=rope, impl="sdpa")
    x = _x(sum(chunks), B=1)
    with torch.no_grad():
        got, _ = _decode(layer, x, chunks)
        assert (got - layer(x)).abs().max() < TOL


def test_flex_decoding_forward() -> None:
    layer = _layer(masks.sliding_window(3), impl="flex")
    x = _x(6)
    with torch.no_grad():
        got, _ = _decode(layer, x, [4, 1, 1])
        assert (got - layer(x)).abs().max() < TOL


def test_document_mask_override_with_cache() -> None:
    """A per-call mask (packed documents, causal) is evaluated at absolute positions while decoding."""
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    m = masks.document(ids) & masks.causal()
    layer = _layer(masks.causal(), impl="sdpa")
    x = _x(9)
    with torch.no_grad():
        y = layer(x, mask=m)
        cache = layer.new_cache(2)
        got = torch.cat([layer(x[:, :4], cache=cache, mask=m)] +
                        [layer(x[:, t:t + 1], cache=cache, mask=m) for t in range(4, 9)], dim=1)
    assert (got - y).abs().max() < TOL


# ---------------------------------------------------------------------------------------------------------------
# prefix-LM: the prefix must arrive in one call


@pytest.mark.parametrize("impl, p, T", [("sdpa", 5, 13), ("reference", 4, 7), ("sdpa", 1, 6), ("sdpa", 0, 5),
                                        ("sdpa", 6, 6)])
def test_prefix_lm_decoding_after_whole_prefix(impl: str, p: int, T: int) -> None:
    layer = _layer(masks.prefix_lm(p), impl=impl)
    x = _x(T)
    with torch.no_grad():
        y = layer(x)
        for m in sorted({max(p, 1), max(p, 1) + 1, T} & set(range(1, T + 1))):
            got, _ = _decode(layer, x, [m] + [1] * (T - m))
            assert (got - y).abs().max() < TOL, m
        if p >= 2:  # the prefix in two calls whose first already covers it: also fine
            got, _ = _decode(layer, x, [p, T - p] if T > p else [p])
            assert (got - y).abs().max() < TOL


def test_prefix_lm_refuses_partial_prefix() -> None:
    layer = _layer(masks.prefix_lm(5))
    cache = layer.new_cache(2)
    with pytest.raises(ValueError, match=r"mask prefix_lm\(prefix_len=5\) lets queries at positions \[0, 3\) see "
                                         r"position 3.*first call must contain >= p tokens"):
        layer(_x(3), cache=cache)
    assert cache.seq_len == 0  # refused before anything was stored
    with pytest.raises(ValueError, match=r"positions \[0, 1\) see position 1"):
        layer(_x(1), cache=cache)


# ---------------------------------------------------------------------------------------------------------------
# sliding cache memory


def test_sliding_cache_memory_bounded_at_layer_level() -> None:
    window = 4
    layer = _layer(masks.sliding_window(window), impl="sdpa")
    cache = layer.new_cache(1)
    assert isinstance(cache, SlidingKVCache) and cache.window == window
    x = _x(40, B=1)
    mems = []
    with torch.no_grad():
        y = layer(x)
        outs = [layer(x[:, :10], cache=cache)]  # a prefill longer than the window
        mems.append(cache.memory_bytes())
        for t in range(10, 40):
            outs.append(layer(x[:, t:t + 1], cache=cache))
            mems.append(cache.memory_bytes())
    assert set(mems) == {2 * 1 * 2 * window * 6 * 8}  # k and v, B=1, H_kv=2, window, D=6, float64
    assert (torch.cat(outs, dim=1) - y).abs().max() < TOL


def test_kv_cache_reset_replays() -> None:
    layer = _layer(masks.causal())
    x = _x(6)
    with torch.no_grad():
        y = layer(x)
        cache = layer.new_cache(2)
        layer(_x(4, seed=3), cache=cache)
        cache.reset()
        got = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(6)], dim=1)
    assert (got - y).abs().max() < TOL


# ---------------------------------------------------------------------------------------------------------------
# cache validation


def test_cache_validation() -> None:
    layer = _layer(masks.causal())
    x = _x(3)
    with pytest.raises(ValueError, match=r"cache must be a KVCache or SlidingKVCache from layer.new_cache\(\), got dict"):
        layer(x, cache={})
    with pytest.raises(ValueError, match=r"cache holds \(batch_size, n_kv_heads, head_dim, v_head_dim\)=\(1, 2, 6, 6\)"):
        layer(x, cache=layer.new_cache(1))
    with pytest.raises(ValueError, match=r"cache holds .*=\(2, 4, 6, 6\)"):
        layer(x, cache=KVCache(2, 4, 6, dtype=F64))
    with pytest.raises(ValueError, match="cache dtype is torch.float32, but the layer computes in torch.float64"):
        layer(x, cache=layer.new_cache(2, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"SlidingKVCache\(window=8\) keeps too few keys for mask causal"):
        layer(x, cache=SlidingKVCache(8, 2, 2, 6, dtype=F64))
    narrow = _layer(masks.sliding_window(5))
    with pytest.raises(ValueError, match=r"SlidingKVCache\(window=4\) keeps too few keys for mask sliding_window\(window=5\)"):
        narrow(x, cache=SlidingKVCache(4, 2, 2, 6, dtype=F64))
    # a larger sliding cache than needed, or a full KVCache, is fine
    with torch.no_grad():
        y = narrow(x)
        assert (narrow(x, cache=SlidingKVCache(7, 2, 2, 6, dtype=F64)) - y).abs().max() < TOL
        assert (narrow(x, cache=KVCache(2, 2, 6, dtype=F64)) - y).abs().max() < TOL


def test_bidirectional_layer_has_no_cache() -> None:
    layer = _layer(None)
    with pytest.raises(ValueError, match="cached decoding needs a mask under which earlier tokens cannot see later ones"):
        layer.new_cache(2)
    causal_layer = _layer(masks.causal())
    with pytest.raises(ValueError, match="cached decoding needs a causal or prefix mask, got mask=bidirectional"):
        causal_layer(_x(3), cache=causal_layer.new_cache(2), mask=masks.bidirectional())
    # a non-causal mask that is not full is probed: the symmetric band sees the next position
    with pytest.raises(ValueError, match=r"lets queries at positions \[0, 3\) see position 3"):
        causal_layer(_x(3), cache=causal_layer.new_cache(2), mask=masks.sliding_window(2, causal=False))


def test_auto_decodes_single_tokens_with_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """impl='auto': a one-token cached step goes to SDPA (no per-step FlexAttention BlockMask), prefill to 'auto'."""
    import attnlab.layers.mha as mha_mod

    seen: list[str] = []
    real = mha_mod.softmax_attention

    def spy(*a, impl: str, **k):
        seen.append(impl)
        return real(*a, impl=impl, **k)

    monkeypatch.setattr(mha_mod, "softmax_attention", spy)
    layer = _layer(masks.strided(3), impl="auto")
    x = _x(6)
    with torch.no_grad():
        y = layer(x)
        got, _ = _decode(layer, x, [3, 1, 1, 1])
    assert seen == ["auto", "auto", "sdpa", "sdpa", "sdpa"]
    assert (got - y).abs().max() < TOL
    bahdanau = _layer(masks.causal(), score="additive", impl="auto")
    seen.clear()
    with torch.no_grad():
        _decode(bahdanau, x[:, :2], [1, 1])
    assert seen == ["auto", "auto"]  # SDPA cannot compute the additive score


def test_refused_cached_call_leaves_the_cache_untouched() -> None:
    """Arguments the softmax op would refuse (a position past the mask's max_len, a backend that cannot compute
    the score, FlexAttention with dropout in training) are refused by the layer *before* ``cache.update``: the cache
    keeps its length and contents, and the same cache goes on decoding correctly."""
    layer = _layer(masks.bigbird(2, 1, 1, seed=3, max_len=6), impl="sdpa")
    x = _x(6)
    with torch.no_grad():
        y = layer(x)
        cache = layer.new_cache(2)
        first = layer(x[:, :5], cache=cache)
        k_before, v_before = (t.clone() for t in cache.keys_values())
        with pytest.raises(ValueError, match=r"max_len=6, got query positions up to q_offset \+ T = 7 and S=7 keys"):
            layer(_x(2, seed=1), cache=cache)
        assert cache.seq_len == 5
        k_after, v_after = cache.keys_values()
        assert torch.equal(k_after, k_before) and torch.equal(v_after, v_before)
        last = layer(x[:, 5:6], cache=cache)  # position 5 < max_len: still fine, and still exact
    assert (torch.cat([first, last], dim=1) - y).abs().max() < TOL
    # without a cache the same check fires before any matmul (previously only inside the op)
    with pytest.raises(ValueError, match=r"max_len=6, got query positions up to q_offset \+ T = 7"):
        layer(_x(7))

    bahdanau = _layer(masks.causal(), score="additive", impl="reference")
    cache = bahdanau.new_cache(2)
    with torch.no_grad():
        bahdanau(x[:, :3], cache=cache)
        for impl in ("sdpa", "flex"):
            bahdanau.impl = impl
            with pytest.raises(ValueError, match=rf"impl='{impl}' does not support score='additive'"):
                bahdanau(x[:, 3:4], cache=cache)
            assert cache.seq_len == 3

    drop = _layer(masks.causal(), impl="flex", dropout=0.1).train()
    cache = drop.new_cache(2)
    with pytest.raises(ValueError, match=r"impl='flex' does not support dropout, got dropout_p=0.1"):
        drop(x[:, :3], cache=cache)
    assert cache.seq_len == 0
