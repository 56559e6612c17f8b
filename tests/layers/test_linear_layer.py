"""LinearAttention layer: registry entries, cached decoding == parallel, forms agree, cross-attention, RoPE,
causality, the recurrent-state cache, and input validation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from attnlab.cache import AttentionCache
from attnlab.cache.recurrent import RecurrentStateCache
from attnlab.layers import get, names
from attnlab.layers.linear import LinearAttention, LinearAttentionConfig
from attnlab.ops.linear import LinearState, feature_dim, linear_attention

F64 = torch.float64
TOL = 1e-10  # float64, exact-math equivalences
MECHS = ("linear", "linear-relu", "based")


def layer(**kw) -> LinearAttention:
    kw.setdefault("d_model", 24)
    kw.setdefault("n_heads", 4)
    return LinearAttentionConfig(**kw).build().to(F64).eval()


def x_(B=2, T=13, d=24, seed=0) -> torch.Tensor:
    return torch.randn(B, T, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


def test_registered_specs() -> None:
    want_map = {"linear": "elu1", "linear-relu": "relu", "based": "taylor"}
    for name in MECHS:
        assert name in names()
        spec = get(name)
        assert spec.causal and not spec.cross and spec.cache == "recurrent"
        assert spec.backends == ("recurrent", "parallel", "chunked")
        assert spec.verify_options["chunk_size"] < 13
        m = spec.build(d_model=24, n_heads=4)
        assert isinstance(m, LinearAttention) and m.feature_map == want_map[name] and m.causal
    assert get("based").build(d_model=24, n_heads=4).qk_head_dim == 16
    with pytest.raises(TypeError):  # unknown options are not swallowed
        get("linear").build(d_model=24, n_heads=4, windw=3)


@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("name", MECHS)
def test_prefill_then_decode_equals_parallel(name: str, rope: bool) -> None:
    m = get(name).build(d_model=24, n_heads=4, n_kv_heads=2, rope=rope, chunk_size=4).to(F64).eval()
    x = x_(T=13)
    m.impl = "parallel"
    whole = m(x)  # (B, T, d_model)
    for impl in ("recurrent", "parallel", "chunked", "auto"):
        m.impl = impl
        for prefill in (1, 5, 13):
            cache = m.new_cache(2)
            outs = [m(x[:, :prefill], cache=cache)]
            outs += [m(x[:, t : t + 1], cache=cache) for t in range(prefill, 13)]
            assert cache.seq_len == 13
            torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=TOL, atol=TOL)  # float64: 1e-10


def test_uneven_segments_with_cache() -> None:
    m = layer(feature_map="taylor", qk_head_dim=4, chunk_size=3)
    x = x_(T=17)
    whole = m(x)
    cache = m.new_cache(2)
    outs = [m(x[:, a:b], cache=cache) for a, b in ((0, 4), (4, 11), (11, 12), (12, 17))]
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("fmap", ["elu1", "relu", "taylor"])
def test_forms_agree_outputs_and_param_grads(fmap: str, causal: bool) -> None:
    m = layer(feature_map=fmap, causal=causal, n_kv_heads=2, head_dim=5, qk_head_dim=4, chunk_size=4, bias=True)
    x = x_(T=13)
    results = {}
    for impl in ("recurrent", "parallel", "chunked"):
        m.impl = impl
        xi = x.clone().requires_grad_(True)
        out = m(xi)
        gx, *gp = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)).sum(),
                                      [xi, *m.parameters()])
        results[impl] = (out, gx, gp)
    ref_out, ref_gx, ref_gp = results["recurrent"]
    for impl in ("parallel", "chunked"):
        out, gx, gp = results[impl]
        torch.testing.assert_close(out, ref_out, rtol=TOL, atol=TOL)  # float64: 1e-10
        torch.testing.assert_close(gx, ref_gx, rtol=TOL, atol=TOL)
        for a, b in zip(gp, ref_gp):
            torch.testing.assert_close(a, b, rtol=TOL, atol=TOL)


def test_layer_matches_op_by_hand() -> None:
    m = layer(feature_map="elu1", n_kv_heads=2, head_dim=5, bias=True)
    x = x_(T=7)
    B, T, _ = x.shape
    q = m.q_proj(x).view(B, T, 4, 5).transpose(1, 2)
    k = m.k_proj(x).view(B, T, 2, 5).transpose(1, 2)
    v = m.v_proj(x).view(B, T, 2, 5).transpose(1, 2)
    o, _ = linear_attention(q, k, v, impl="recurrent")
    want = m.out_proj(o.transpose(1, 2).reshape(B, T, 20))  # head_dim explicit: 4 * 5 -> d_model
    torch.testing.assert_close(m(x), want, rtol=TOL, atol=TOL)


def test_causality_by_perturbation() -> None:
    m = layer(feature_map="taylor", qk_head_dim=4, rope=True, chunk_size=4)
    x = x_(T=13)
    x2 = x.clone()
    x2[:, 8:] += torch.randn_like(x2[:, 8:])
    a, b = m(x), m(x2)
    torch.testing.assert_close(b[:, :8], a[:, :8], rtol=1e-13, atol=1e-13)
    assert (b[:, 8:] - a[:, 8:]).abs().max() > 1e-3


def test_bidirectional_self_and_cross_attention() -> None:
    m = layer(causal=False, n_kv_heads=1, chunk_size=3)
    x, ctx = x_(T=6, seed=1), x_(T=9, seed=2)
    y = m(x, context=ctx)
    assert y.shape == (2, 6, 24)
    B = 2
    q = m.q_proj(x).view(B, 6, 4, 6).transpose(1, 2)
    k = m.k_proj(ctx).view(B, 9, 1, 6).transpose(1, 2)
    v = m.v_proj(ctx).view(B, 9, 1, 6).transpose(1, 2)
    o, _ = linear_attention(q, k, v, causal=False, impl="recurrent")
    torch.testing.assert_close(y, m.out_proj(o.transpose(1, 2).reshape(B, 6, 24)), rtol=TOL, atol=TOL)
    for impl in ("recurrent", "parallel"):
        m.impl = impl
        torch.testing.assert_close(m(x, context=ctx), y, rtol=TOL, atol=TOL)
    # bidirectional self-attention: the first output depends on the last token
    m.impl = "auto"
    x2 = x.clone()
    x2[:, -1] += 1
    assert (m(x2)[:, 0] - m(x)[:, 0]).abs().max() > 1e-4


def test_rope_is_applied_at_absolute_positions() -> None:
    cfg = LinearAttentionConfig(d_model=24, n_heads=4, rope=True)
    m = cfg.build().to(F64).eval()
    m0 = dataclasses.replace(cfg, rope=False).build().to(F64).eval()
    m0.load_state_dict(m.state_dict())
    x = x_(T=5)
    assert (m(x) - m0(x)).abs().max() > 1e-4  # RoPE changes the output
    # the same token sequence shifted by 3 positions gives different outputs (absolute positions matter)
    cache = m.new_cache(2)
    m(x_(T=3, seed=7), cache=cache)
    pre = cache.state
    shifted = m(x, cache=cache)
    cache2 = m.new_cache(2)
    cache2.update(pre, 1)  # the same state, but at position 1 instead of 3
    assert (m(x, cache=cache2) - shifted).abs().max() > 1e-6


def test_dropout_training_only() -> None:
    m = layer(dropout=0.5)
    x = x_(T=5)
    assert torch.equal(m(x), m(x))  # eval: deterministic
    m.train()
    assert not torch.equal(m(x), m(x))


def test_cache_interface() -> None:
    m = layer(feature_map="taylor", qk_head_dim=3, n_kv_heads=2, head_dim=5)
    cache = m.new_cache(3)
    assert isinstance(cache, AttentionCache) and isinstance(cache, RecurrentStateCache)
    F = feature_dim("taylor", 3)
    assert cache.shape == (3, 4, F, 5) and cache.dtype == F64 and cache.seq_len == 0
    assert cache.memory_bytes() == (3 * 4 * F * 5 + 3 * 4 * F) * 8
    x = x_(B=3, T=4)
    first = m(x, cache=cache)
    assert cache.seq_len == 4
    assert cache.memory_bytes() == (3 * 4 * F * 5 + 3 * 4 * F) * 8  # constant memory
    m(x, cache=cache)
    cache.reset()
    assert cache.seq_len == 0 and torch.count_nonzero(cache.state.kv) == 0
    torch.testing.assert_close(m(x, cache=cache), first, rtol=0, atol=0)
    assert "seq_len=4" in repr(cache)
    with pytest.raises(ValueError, match=r"state.kv must have shape \(3, 4, 13, 5\)"):
        cache.update(LinearState(torch.zeros(1, 4, F, 5, dtype=F64), torch.zeros(1, 4, F, dtype=F64)), 1)
    with pytest.raises(ValueError, match="n_tokens must be an int >= 1"):
        cache.update(cache.state, 0)
    n_before, kv_before = cache.seq_len, cache.state.kv
    with pytest.raises(ValueError, match=r"state.kv.device must be the cache device cpu, got meta"):
        cache.update(LinearState(*(t.to("meta") for t in cache.state)), 1)
    assert cache.seq_len == n_before and cache.state.kv is kv_before  # a refused update stores nothing
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        RecurrentStateCache(0, 1, 1, 1)


def test_cache_keeps_graph_until_detached() -> None:
    m = layer()
    cache = m.new_cache(2)
    m(x_(T=3), cache=cache)
    assert cache.state.kv.requires_grad
    cache.detach_()
    assert not cache.state.kv.requires_grad and cache.seq_len == 3


@pytest.mark.parametrize(
    "kw, pattern",
    [
        (dict(d_model=25, n_heads=4), r"n_heads=4 must divide d_model=25"),
        (dict(n_kv_heads=3), r"n_kv_heads=3 must divide n_heads=4"),
        (dict(feature_map="exp"), r"feature_map must be one of \('elu1', 'relu', 'taylor'\), got 'exp'"),
        (dict(impl="flex"), r"impl must be one of \('auto', 'parallel', 'chunked', 'recurrent', 'fla'\), got 'flex'"),
        (dict(rope=True, qk_head_dim=3), r"rope=True needs an even qk_head_dim, got qk_head_dim=3"),
        (dict(chunk_size=0), r"chunk_size must be an int >= 1, got 0"),
        (dict(dropout=1.0), r"dropout must be a float in \[0, 1\), got 1.0"),
        (dict(eps=-1.0), r"eps must be a finite float >= 0, got -1.0"),
        (dict(causal=1), r"causal must be a bool, got 1"),
        (dict(head_dim=0), r"head_dim must be an int >= 1, got 0"),
    ],
)
def test_config_errors(kw, pattern) -> None:
    kw = {"d_model": 24, "n_heads": 4, **kw}
    with pytest.raises(ValueError, match=pattern):
        LinearAttentionConfig(**kw)


def test_forward_errors() -> None:
    m = layer()
    x = x_(T=4)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_model=24\), got \(4, 24\)"):
        m(x[0])
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, d_model=24\), got \(2, 4, 23\)"):
        m(x[..., :23])
    with pytest.raises(ValueError, match=r"x dtype must be the layer's parameter dtype torch.float64, got torch.float32"):
        m(x.float())
    with pytest.raises(ValueError, match=r"x device must be the layer's parameter device cpu, got meta"):
        m(x.to("meta"))
    with pytest.raises(ValueError, match=r"context= \(cross-attention\) needs causal=False"):
        m(x, context=x)
    with pytest.raises(ValueError, match=r"cache must hold a state of shape \(B, H, F, Dv\)=\(2, 4, 6, 6\), "
                                         r"got \(3, 4, 6, 6\)"):
        m(x, cache=m.new_cache(3))
    with pytest.raises(ValueError, match=r"cache must be a RecurrentStateCache"):
        m(x, cache=object())
    with pytest.raises(ValueError, match=r"cache dtype must be the layer's parameter dtype torch.float64"):
        m(x, cache=m.new_cache(2, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"impl must be one of .*got 'sdpa'"):
        m.impl = "sdpa"
    b = layer(causal=False)
    with pytest.raises(ValueError, match=r"cached decoding needs causal=True"):
        b.new_cache(2)
    with pytest.raises(ValueError, match=r"cache needs causal=True"):
        b(x, cache=m.new_cache(2))
    with pytest.raises(ValueError, match=r"context must have shape \(B=2, S >= 1, d_model=24\), got \(1, 4, 24\)"):
        b(x, context=x[:1])
    with pytest.raises(ValueError, match=r"context dtype must be the layer's parameter dtype"):
        b(x, context=x.float())
