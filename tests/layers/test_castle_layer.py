"""CastleAttention: parameters, parity rule, RoPE placement, causality, backends and cached decoding (fp64)."""

from __future__ import annotations

import pytest
import torch

from attnlab.cache.uqkv import UQKVCache
from attnlab.layers import registry
from attnlab.layers.castle import CastleAttention, CastleConfig, heads_for_parity
from attnlab.layers.rope import apply_rope
from attnlab.ops.castle import triton_available

F64 = torch.float64


def _layer(**kw) -> CastleAttention:
    cfg = dict(d_model=24, n_heads=4)
    cfg.update(kw)
    torch.manual_seed(0)
    return CastleConfig(**cfg).build().to(F64)


def _x(B: int = 2, T: int = 11, d: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, d, dtype=F64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("d_model", "n_heads", "head_dim"), [(24, 4, None), (32, 3, 6), (1024, 9, 64)])
def test_parameter_count_is_7_n_d_dmodel(d_model: int, n_heads: int, head_dim: int | None) -> None:
    layer = CastleConfig(d_model=d_model, n_heads=n_heads, head_dim=head_dim).build()
    d = head_dim or d_model // n_heads
    assert sum(p.numel() for p in layer.parameters()) == 7 * n_heads * d * d_model
    assert layer.in_proj.bias is None and layer.out_proj.bias is None
    assert layer.in_proj.weight.shape == (6 * n_heads * d, d_model)  # one fused matmul for the six projections


def test_heads_for_parity() -> None:
    assert heads_for_parity(14) == 8  # paper's S: exact parity
    assert heads_for_parity(16) == 9  # paper's M/L/XL: 9.14 rounded down
    assert heads_for_parity(1) == 1 and heads_for_parity(2) == 1  # never below one head
    assert [heads_for_parity(n) for n in range(1, 9)] == [1, 1, 2, 2, 3, 3, 4, 5]
    assert CastleAttention.heads_for_parity(7) == 4
    for name in ("castle", "castle-swl"):
        assert registry.get(name).heads_for_parity(14) == 8
    # S: 7 * 8 * 64 * 896 == 4 * 14 * 64 * 896
    assert 7 * heads_for_parity(14) * 64 * 896 == 4 * 14 * 64 * 896
    with pytest.raises(ValueError, match="n_standard_heads must be an int >= 1, got 0"):
        heads_for_parity(0)


def test_registry_entries() -> None:
    castle, swl = registry.get("castle"), registry.get("castle-swl")
    for spec in (castle, swl):
        assert spec.causal and not spec.cross and spec.cache == "uq-kv"
        assert spec.backends[:3] == ("reference", "parallel", "chunked")
        assert ("triton" in spec.backends) == triton_available()
    assert castle.build(d_model=24, n_heads=4).lookahead is None
    assert swl.defaults == {"lookahead": 128} and swl.build(d_model=24, n_heads=4).lookahead == 128
    assert swl.verify_options == {"lookahead": 3}


def test_rope_rotates_all_but_v_c() -> None:
    layer = _layer()
    x = _x(T=5)
    raw = layer.in_proj(x).view(2, 5, 6, 4, 6).permute(2, 0, 3, 1, 4)  # (6, B, H, T, D)
    got = layer.project(x, offset=3)
    for i, name in enumerate(("q_u", "k_u", "v_u", "q_c", "k_c")):
        torch.testing.assert_close(got[i], apply_rope(raw[i], 3), atol=1e-14, rtol=0, msg=name)
        assert not torch.allclose(got[i], raw[i])
    torch.testing.assert_close(got[5], raw[5], atol=0, rtol=0)  # v_c is never rotated
    off = _layer(rope=False).project(x, offset=3)
    for i in range(6):
        torch.testing.assert_close(off[i], raw[i], atol=0, rtol=0)


@pytest.mark.parametrize("lookahead", [None, 3])
def test_backends_agree_outputs_and_grads(lookahead: int | None) -> None:
    layer = _layer(lookahead=lookahead, chunk_size=4)
    x = _x().requires_grad_()
    outs, grads = {}, {}
    for impl in ("reference", "parallel", "chunked", "auto"):
        layer.impl = impl
        layer.zero_grad()
        y = layer(x)
        gx, = torch.autograd.grad(y.square().sum(), x)
        y2 = layer(x)
        y2.square().sum().backward()
        outs[impl], grads[impl] = y, (gx, layer.in_proj.weight.grad.clone(), layer.out_proj.weight.grad.clone())
    for impl in ("reference", "chunked", "auto"):
        torch.testing.assert_close(outs[impl], outs["parallel"], atol=1e-12, rtol=0)  # fp64
        for a, b in zip(grads[impl], grads["parallel"]):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)  # fp64, custom backward vs autograd


@pytest.mark.parametrize("rope", [True, False])
@pytest.mark.parametrize("lookahead", [None, 2])
def test_causality_with_rope(rope: bool, lookahead: int | None) -> None:
    layer = _layer(rope=rope, lookahead=lookahead, chunk_size=3, impl="chunked")
    x = _x(T=12)
    m = 5
    y = layer(x)
    x2 = x.clone()
    x2[:, m:] = torch.randn_like(x2[:, m:])
    torch.testing.assert_close(layer(x2)[:, :m], y[:, :m], atol=1e-14, rtol=0)  # perturb the future
    torch.testing.assert_close(layer(x[:, :m]), y[:, :m], atol=1e-13, rtol=0)  # f(X[:m]) == f(X)[:m]
    xg = x.clone().requires_grad_()
    out = layer(xg)
    for t in range(12):
        g, = torch.autograd.grad(out[:, t].sum(), xg, retain_graph=True)
        assert torch.equal(g[:, t + 1 :], torch.zeros_like(g[:, t + 1 :]))  # no gradient path from the future
        assert g[:, : t + 1].abs().sum() > 0


@pytest.mark.parametrize("lookahead", [None, 0, 3])
@pytest.mark.parametrize("prefill", [0, 1, 5])
def test_cached_decoding_equals_parallel(lookahead: int | None, prefill: int) -> None:
    layer = _layer(lookahead=lookahead, impl="parallel")
    x = _x(T=12)
    want = layer(x)
    cache = layer.new_cache(2)
    assert isinstance(cache, UQKVCache) and cache.dtype == F64 and cache.lookahead == lookahead
    with torch.no_grad():
        outs = [layer(x[:, :prefill], cache=cache)] if prefill else []
        outs += [layer(x[:, t : t + 1], cache=cache) for t in range(prefill, 12)]
    assert cache.seq_len == 12
    torch.testing.assert_close(torch.cat(outs, dim=1), want, atol=1e-12, rtol=0)  # fp64, RoPE offsets = seq_len
    # final cached U equals U^L of the (rotated) projections
    q_u, k_u, v_u, *_ = layer.project(x)
    from attnlab.ops.castle import lookahead_keys_at

    torch.testing.assert_close(cache.state().u, lookahead_keys_at(q_u, k_u, v_u, 11, lookahead=lookahead), atol=1e-12, rtol=0)


def test_errors() -> None:
    layer = _layer()
    x = _x(T=3)
    with pytest.raises(ValueError, match="context .* is not supported"):
        layer(x, context=x)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T >= 1, d_model=24\), got \(2, 3, 5\)"):
        layer(torch.randn(2, 3, 5, dtype=F64))
    with pytest.raises(ValueError, match=r"x dtype must be the layer's parameter dtype torch.float64, got torch.float32"):
        layer(x.float())
    with pytest.raises(ValueError, match=r"x device must be the layer's parameter device cpu, got meta"):
        layer(x.to("meta"))
    with pytest.raises(ValueError, match="cache was built for lookahead=3, but this layer has lookahead=None"):
        layer(x, cache=_layer(lookahead=3).new_cache(2))
    layer.impl = "nope"
    with pytest.raises(ValueError, match="impl must be one of"):
        layer(x)
    with pytest.raises(ValueError, match="n_heads=5 must divide d_model=24"):
        CastleConfig(d_model=24, n_heads=5)
    with pytest.raises(ValueError, match="rope=True needs an even head_dim, got head_dim=3"):
        CastleConfig(d_model=24, n_heads=8)
    CastleConfig(d_model=24, n_heads=8, rope=False)  # odd head dim is fine without RoPE
    with pytest.raises(ValueError, match="lookahead must be None or an int >= 0, got lookahead=-2"):
        CastleConfig(d_model=24, n_heads=4, lookahead=-2)
    with pytest.raises(ValueError, match="dropout must be a float in \\[0, 1\\), got 1.5"):
        CastleConfig(d_model=24, n_heads=4, dropout=1.5)
    with pytest.raises(TypeError):
        CastleConfig(d_model=24, n_heads=4, windw=3)  # type: ignore[call-arg]  # typos are not swallowed


def test_dropout_only_in_training() -> None:
    layer = _layer(dropout=0.5)
    x = _x(T=4)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x), atol=0, rtol=0)
    layer.train()
    assert not torch.equal(layer(x), layer(x))
