"""MultiHeadAttention: equality with torch.nn.MultiheadAttention, GQA/MQA, scores, RoPE, dropout, validation.

All comparisons in float64 on CPU. Tolerances are written next to each case: exact-math equivalences that only
reorder sums get 1e-12 (observed ~1e-15).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from attnlab import masks
from attnlab.layers.mha import MultiHeadAttention, MultiHeadAttentionConfig
from attnlab.verify.oracles import compare_with_torch_mha

F64 = torch.float64
TOL = 1e-12  # float64, same math in another summation order
IMPLS_GRAD = ("reference", "sdpa")  # flex has no CPU backward in torch 2.13: forward-only cases below


def _layer(**kw) -> MultiHeadAttention:
    kw.setdefault("d_model", 24)
    kw.setdefault("n_heads", 4)
    return MultiHeadAttentionConfig(**kw).build().to(F64).eval()


def _x(B: int = 2, T: int = 7, d: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---------------------------------------------------------------------------------------------------------------
# oracle: torch.nn.MultiheadAttention


@pytest.mark.parametrize("impl", IMPLS_GRAD)
@pytest.mark.parametrize("mask", [masks.causal(), None, masks.bidirectional()], ids=["causal", "none", "full"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("T", [1, 13])
def test_matches_torch_mha(impl: str, mask, bias: bool, T: int) -> None:
    layer = _layer(mask=mask, bias=bias, impl=impl)
    if bias:  # nn.Linear biases start random already; make sure they are not all zero
        assert layer.in_proj.bias.abs().sum() > 0
    errs = compare_with_torch_mha(layer, _x(T=T))
    assert max(errs.values()) < TOL, errs


@pytest.mark.parametrize("impl", IMPLS_GRAD)
@pytest.mark.parametrize("T, S", [(7, 3), (3, 11), (1, 5)])
def test_cross_attention_matches_torch_mha(impl: str, T: int, S: int) -> None:
    layer = _layer(impl=impl, bias=True)  # a causal self-attention layer also accepts a context (unmasked)
    errs = compare_with_torch_mha(layer, _x(T=T), _x(T=S, seed=1))
    assert max(errs.values()) < TOL, errs
    cross = _layer(impl=impl, mask=None, cross=True, bias=True)  # a dedicated cross-attention layer
    cross.load_state_dict(layer.state_dict())
    assert (cross(_x(T=T), context=_x(T=S, seed=1)) - layer(_x(T=T), context=_x(T=S, seed=1))).abs().max() == 0
    errs = compare_with_torch_mha(cross, _x(T=T), _x(T=S, seed=1))
    assert max(errs.values()) < TOL, errs


def test_cross_attention_ignores_future_of_x_not_context() -> None:
    """With a context, every query sees every context position: changing the last context row moves all outputs."""
    layer = _layer()
    x, c = _x(T=5), _x(T=4, seed=1)
    y = layer(x, context=c)
    c2 = c.clone()
    c2[:, -1] += 1.0
    assert (layer(x, context=c2) - y).abs().amax(dim=(0, 2)).min() > 1e-6


def test_flex_forward_matches_torch_mha() -> None:
    layer = _layer(impl="flex")
    with torch.no_grad():
        errs = compare_with_torch_mha(layer, _x(T=13), grads=False)
    assert errs["output"] < TOL, errs


def test_single_head() -> None:
    layer = _layer(n_heads=1, bias=True)
    errs = compare_with_torch_mha(layer, _x(T=9))
    assert max(errs.values()) < TOL, errs


# ---------------------------------------------------------------------------------------------------------------
# GQA / MQA


def _expand_kv(gqa: MultiHeadAttention) -> MultiHeadAttention:
    """A plain MHA layer whose key/value heads are the GQA layer's, each repeated for its query group."""
    H, Hkv, D = gqa.n_heads, gqa.n_kv_heads, gqa.head_dim
    cfg = dataclasses.replace(gqa.config, n_kv_heads=None)
    mha = cfg.build().to(F64).eval()
    w = gqa.in_proj.weight.detach()
    wq, wk, wv = w[: H * D], w[H * D: (H + Hkv) * D], w[(H + Hkv) * D:]
    rep = lambda t: t.view(Hkv, D, -1).repeat_interleave(H // Hkv, dim=0).reshape(H * D, -1)  # noqa: E731
    with torch.no_grad():
        mha.in_proj.weight.copy_(torch.cat([wq, rep(wk), rep(wv)]))
        mha.out_proj.weight.copy_(gqa.out_proj.weight)
    return mha


@pytest.mark.parametrize("impl", IMPLS_GRAD)
@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
@pytest.mark.parametrize("mask", [masks.causal(), masks.sliding_window(3), None], ids=["causal", "window", "none"])
def test_gqa_equals_mha_with_repeated_kv_heads(impl: str, n_kv_heads: int, mask) -> None:
    gqa = _layer(n_kv_heads=n_kv_heads, impl=impl, mask=mask, rope=True)
    assert gqa.in_proj.weight.shape[0] == (4 + 2 * n_kv_heads) * 6
    mha = _expand_kv(gqa)
    x1 = _x(T=11).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = gqa(x1), mha(x2)
    assert (y1 - y2).abs().max() < TOL
    y1.pow(2).sum().backward()
    y2.pow(2).sum().backward()
    assert (x1.grad - x2.grad).abs().max() < TOL


def test_gqa_cache_stores_kv_heads_only() -> None:
    gqa = _layer(n_kv_heads=1)
    cache = gqa.new_cache(2)
    with torch.no_grad():
        gqa(_x(T=16), cache=cache)
    assert cache.n_kv_heads == 1
    assert cache.memory_bytes() == 2 * 2 * 1 * cache.capacity * 6 * 8  # k and v, B=2, one head, D=6, float64


# ---------------------------------------------------------------------------------------------------------------
# scores


def test_luong_general_equals_dot_with_transformed_query_projection() -> None:
    """q W k^T == (q W) k^T: a general layer equals a dot layer whose query rows are W_h^T W_q,h."""
    gen = _layer(score="general")
    with torch.no_grad():
        gen.score_weight.copy_(torch.randn(4, 6, 6, dtype=F64))
    dot = _layer(score="dot")
    H, D = 4, 6
    w = gen.in_proj.weight.detach()
    wq = w[: H * D].view(H, D, 24)  # (H, D, d_model)
    wq2 = torch.einsum("hde,hdm->hem", gen.score_weight.detach(), wq).reshape(H * D, 24)  # rows of (x W_q) W
    with torch.no_grad():
        dot.in_proj.weight.copy_(torch.cat([wq2, w[H * D:]]))
        dot.out_proj.weight.copy_(gen.out_proj.weight)
    x = _x(T=9)
    for impl in ("reference", "sdpa"):
        gen.impl = dot.impl = impl
        assert (gen(x) - dot(x)).abs().max() < TOL


def test_dot_score_is_unscaled() -> None:
    """'dot' equals 'scaled_dot' with query weights multiplied by sqrt(D)."""
    dot, sd = _layer(score="dot"), _layer()
    with torch.no_grad():
        sd.load_state_dict(dot.state_dict())
        sd.in_proj.weight[:24].mul_(6 ** 0.5)
    x = _x(T=8)
    assert (dot(x) - sd(x)).abs().max() < TOL


def test_additive_layer_matches_explicit_formula() -> None:
    layer = _layer(score="additive", additive_dim=5, n_kv_heads=2, bias=True)
    x = _x(T=6)
    B, T, H, Hkv, D = 2, 6, 4, 2, 6
    q, k, v = layer.in_proj(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
    q = q.view(B, T, H, D)
    k = k.view(B, T, Hkv, D).repeat_interleave(2, dim=2)
    v = v.view(B, T, Hkv, D).repeat_interleave(2, dim=2)
    out = torch.zeros(B, T, H, D, dtype=F64)
    for h in range(H):
        for i in range(T):
            s = torch.stack([
                (torch.tanh(q[:, i, h] @ layer.score_w_q[h] + k[:, j, h] @ layer.score_w_k[h]) * layer.score_v[h]).sum(-1)
                for j in range(i + 1)
            ], dim=-1)  # (B, i + 1): causal
            out[:, i, h] = (s.softmax(-1).unsqueeze(-1) * v[:, : i + 1, h]).sum(1)
    want = layer.out_proj(out.reshape(B, T, H * D))
    assert (layer(x) - want).abs().max() < TOL


def test_score_parameters_are_trained() -> None:
    for score, names in (("general", ["score_weight"]), ("additive", ["score_w_q", "score_w_k", "score_v"])):
        layer = _layer(score=score)
        layer(_x(T=5)).pow(2).sum().backward()
        for n in names:
            assert getattr(layer, n).grad is not None and getattr(layer, n).grad.abs().sum() > 0, (score, n)


# ---------------------------------------------------------------------------------------------------------------
# RoPE


def test_rope_is_relative() -> None:
    """A document starting at position 7 gives the same outputs as the same document at position 0.

    Packed sequence [a (7 tokens), b (5 tokens)] with a causal document mask: b's outputs only depend on
    relative positions inside b, so they equal running b alone. A RoPE that rotated only q, or rotated q and k at
    different positions, would break this; no-RoPE passes it too, so we also check that RoPE changes the output.
    """
    layer = _layer(rope=True)
    a, b = _x(T=7), _x(T=5, seed=1)
    ids = torch.tensor([0] * 7 + [1] * 5)
    packed = layer(torch.cat([a, b], dim=1), mask=masks.document(ids) & masks.causal())
    alone = layer(b)
    assert (packed[:, 7:] - alone).abs().max() < 1e-12
    assert (packed[:, :7] - layer(a)).abs().max() < 1e-12
    no_rope = _layer(rope=False)
    no_rope.load_state_dict(layer.state_dict())
    assert (no_rope(b) - alone).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# dropout


def test_dropout_only_in_training() -> None:
    layer = _layer(dropout=0.5, impl="reference")
    plain = _layer(impl="reference")
    plain.load_state_dict(layer.state_dict())
    x = _x(T=9)
    assert (layer.eval()(x) - plain(x)).abs().max() == 0.0
    layer.train()
    torch.manual_seed(1)
    y1 = layer(x)
    torch.manual_seed(2)
    y2 = layer(x)
    assert (y1 - y2).abs().max() > 1e-3  # dropout really acts in training


# ---------------------------------------------------------------------------------------------------------------
# config validation


@pytest.mark.parametrize("kw, match", [
    (dict(d_model=512, n_heads=6), r"n_heads=6 must divide d_model=512"),
    (dict(d_model=24, n_heads=4, n_kv_heads=3), r"n_kv_heads=3 must divide n_heads=4"),
    (dict(d_model=24, n_heads=0), r"n_heads must be an int >= 1, got 0"),
    (dict(d_model=24, n_heads=4, head_dim=0), r"head_dim must be an int >= 1, got 0"),
    (dict(d_model=24, n_heads=4, score="cosine"), r"score must be one of .*got 'cosine'"),
    (dict(d_model=24, n_heads=4, additive_dim=3), r"additive_dim is only used with score='additive'"),
    (dict(d_model=24, n_heads=4, mask="causal"), r"mask must be an attnlab.masks.Mask, a mask_mod callable or None, got str"),
    (dict(d_model=20, n_heads=4, rope=True), r"rope=True needs an even head_dim, got head_dim=5"),
    (dict(d_model=24, n_heads=4, dropout=1.0), r"dropout must be a float in \[0, 1\), got 1.0"),
    (dict(d_model=24, n_heads=4, impl="cuda"), r"impl must be one of \('auto', 'reference', 'sdpa', 'flex'\), got 'cuda'"),
    (dict(d_model=24, n_heads=4, cross=True), r"cross=True .* mask must be None, got mask=causal"),
    (dict(d_model=24, n_heads=4, cross=True, mask=None, rope=True), r"rope=True is not supported with cross=True"),
])
def test_config_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiHeadAttentionConfig(**kw)


def test_explicit_head_dim() -> None:
    layer = _layer(d_model=20, n_heads=3, head_dim=8)
    assert layer.in_proj.weight.shape == (3 * 3 * 8, 20) and layer.out_proj.weight.shape == (20, 24)
    assert layer(_x(T=4, d=20)).shape == (2, 4, 20)


def test_causal_is_derived_from_mask() -> None:
    assert MultiHeadAttentionConfig(d_model=8, n_heads=2).causal
    assert MultiHeadAttentionConfig(d_model=8, n_heads=2, mask=masks.strided(2)).causal
    assert not MultiHeadAttentionConfig(d_model=8, n_heads=2, mask=None).causal
    assert not MultiHeadAttentionConfig(d_model=8, n_heads=2, mask=masks.prefix_lm(3)).causal


# ---------------------------------------------------------------------------------------------------------------
# input validation: ValueError before any matmul


class _NoMatmul(nn.Module):
    def forward(self, *a, **k):  # pragma: no cover - must never run
        raise AssertionError("a projection ran before validation")


def _guarded(**kw) -> MultiHeadAttention:
    layer = _layer(**kw)
    w = layer.in_proj.weight  # validation reads the parameters' dtype/device only
    layer.in_proj.forward = _NoMatmul().forward  # type: ignore[method-assign]
    assert layer.in_proj.weight is w
    return layer


@pytest.mark.parametrize("make_args, match", [
    (lambda: (torch.randn(2, 24, dtype=F64),), r"x must have shape \(B, T, d_model=24\), got \(2, 24\)"),
    (lambda: (torch.randn(2, 3, 25, dtype=F64),), r"x must have shape \(B, T, d_model=24\), got \(2, 3, 25\)"),
    (lambda: (torch.randn(2, 0, 24, dtype=F64),), r"x must have B >= 1 and T >= 1"),
    (lambda: (torch.randn(2, 3, 24),), r"x dtype torch.float32 does not match the layer's parameters \(torch.float64\)"),
    (lambda: ([[0.0] * 24],), r"x must be a torch.Tensor"),
])
def test_bad_x(make_args, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _guarded()(*make_args())


@pytest.mark.parametrize("ctx, match", [
    (torch.randn(2, 5, 23, dtype=F64), r"context must have shape \(B=2, S >= 1, d_model=24\), got \(2, 5, 23\)"),
    (torch.randn(3, 5, 24, dtype=F64), r"context must have shape \(B=2, S >= 1, d_model=24\), got \(3, 5, 24\)"),
    (torch.randn(2, 5, 24), r"context must have the layer's dtype torch.float64"),
    ("ctx", r"context must be a torch.Tensor"),
])
def test_bad_context(ctx, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _guarded()(_x(T=3), context=ctx)


def test_cross_layer_needs_context_and_no_cache() -> None:
    layer = _guarded(cross=True, mask=None)
    with pytest.raises(ValueError, match=r"cross-attention layer \(cross=True\): forward needs context"):
        layer(_x(T=3))
    with pytest.raises(ValueError, match="has no decoding cache"):
        layer.new_cache(2)
    plain = _guarded()
    with pytest.raises(ValueError, match="cache is not supported together with context"):
        plain(_x(T=3), context=_x(T=2), cache=_layer().new_cache(2))


def test_bad_mask_override_and_impl() -> None:
    layer = _guarded()
    with pytest.raises(ValueError, match="mask must be an attnlab.masks.Mask, a mask_mod callable or None, got int"):
        layer(_x(T=3), mask=3)  # (a mask_mod callable is accepted: tests/masks/test_mask_mod_callables.py)
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'reference', 'sdpa', 'flex'\), got 'fast'"):
        layer.impl = "fast"
    assert layer.impl == "auto"


def test_impl_is_reassignable_and_used() -> None:
    layer = _layer(score="additive")
    layer.impl = "sdpa"  # a valid name, but SDPA cannot compute the additive score: the op says so
    with pytest.raises(ValueError, match="impl='sdpa' does not support score='additive'"):
        layer(_x(T=3))
    layer.impl = "reference"
    assert layer(_x(T=3)).shape == (2, 3, 24)


# ---------------------------------------------------------------------------------------------------------------
# fast paths


def test_plain_causal_reaches_sdpa_is_causal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain causal self-attention: one SDPA call with is_causal=True and no dense mask; a one-token decoding step
    with the plain causal mask passes no mask at all."""
    import attnlab.ops.softmax.sdpa as sdpa_mod

    calls: list[dict] = []
    real = sdpa_mod.F.scaled_dot_product_attention

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(sdpa_mod.F, "scaled_dot_product_attention", spy)
    for impl in ("auto", "sdpa"):
        calls.clear()
        layer = _layer(impl=impl)
        layer(_x(T=16))
        assert len(calls) == 1 and calls[0].get("is_causal") is True and calls[0].get("attn_mask") is None
        cache = layer.new_cache(2)
        with torch.no_grad():
            layer(_x(T=5), cache=cache)
            calls.clear()
            layer(_x(T=1), cache=cache)
        assert len(calls) == 1 and not calls[0].get("is_causal") and calls[0].get("attn_mask") is None


@pytest.mark.gpu
@pytest.mark.parametrize("mask", [masks.causal(), masks.sliding_window(5), masks.bigbird(4, 1, 2)],
                         ids=["causal", "window", "bigbird"])
def test_cuda_backends_match_reference(mask) -> None:
    """On CUDA every backend (flex included, with its backward) equals the reference; float32, tol 1e-4.

    T=100 with 2 query heads per KV head hit flex-decoding's NoValidChoicesError on an H200 (torch 2.11); the flex
    path now asks for the standard kernel. Should it still fall back to the uncompiled FlexAttention, the test
    prints so and still checks the values."""
    from attnlab.ops.softmax.flex import record_flex_fallbacks

    ref = MultiHeadAttentionConfig(d_model=64, n_heads=4, n_kv_heads=2, mask=mask, rope=True,
                                   impl="reference").build().cuda().eval()
    x = torch.randn(2, 100, 64, device="cuda")
    out = {}
    for impl in ("reference", "sdpa", "flex"):
        ref.impl = impl
        xi = x.clone().requires_grad_(True)
        with record_flex_fallbacks() as taken:
            y = ref(xi)
        y.pow(2).sum().backward()
        out[impl] = (y.detach(), xi.grad)
        ref.zero_grad()
    print(f"[flex fallback] {mask.name}: {taken}" if taken else f"[flex] {mask.name}: every call compiled")
    for impl in ("sdpa", "flex"):
        assert (out[impl][0] - out["reference"][0]).abs().max() < 1e-4, impl
        assert (out[impl][1] - out["reference"][1]).abs().max() < 1e-4, impl


# ---------------------------------------------------------------------------------------------------------------
# key padding: NaN/inf held at padded positions cannot reach a real position (module docstring, "Padding")


def _padding() -> torch.Tensor:
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, 4:] = False
    valid[1, 5:] = False
    return valid  # (B, S): row 0 has 4 real positions, row 1 has 5


def _poison(t: torch.Tensor) -> torch.Tensor:
    """NaN and inf at the padded positions of :func:`_padding` (rows 0: 4, 5; 1: 5)."""
    t = t.clone()
    t[0, 4:] = float("nan")
    t[1, 5, ::2] = float("inf")
    return t


@pytest.mark.parametrize("impl", ["reference", "sdpa", "flex"])
@pytest.mark.parametrize("via", ["context", "context_kv"])
def test_cross_attention_padded_nan_context_does_not_reach_outputs(impl: str, via: str) -> None:
    """Before the fix a NaN in one padded context row made every output of SDPA and FlexAttention NaN."""
    layer = _layer(mask=None, cross=True, impl=impl, bias=True)
    x, c = _x(T=5), _x(T=6, seed=1)
    pad = masks.key_padding(_padding())

    def run(ctx: torch.Tensor):
        xs, cs = x.clone().requires_grad_(impl != "flex"), ctx.clone().requires_grad_(impl != "flex")
        with torch.set_grad_enabled(impl != "flex"):
            kw = {"context": cs} if via == "context" else {"context_kv": layer.project_context(cs)}
            out = layer(xs, mask=pad, **kw)
            if impl != "flex":
                out.backward(torch.ones_like(out))
        return out.detach(), xs.grad, cs.grad

    clean, gx_clean, gc_clean = run(c)
    out, gx, gc = run(_poison(c))
    assert torch.isfinite(out).all()
    assert torch.allclose(out, clean, rtol=0, atol=TOL)
    if impl != "flex":  # gradients of the query input and of the real context rows are those of the clean run
        assert torch.allclose(gx, gx_clean, rtol=0, atol=TOL)
        valid = _padding()
        assert torch.allclose(gc[valid], gc_clean[valid], rtol=0, atol=TOL)
        assert torch.equal(gc[~valid], torch.zeros_like(gc[~valid]))


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("own", [None, "prefix"])
def test_encoder_padded_nan_input_does_not_reach_real_positions(impl: str, own: str | None) -> None:
    """Self-attention with ``key_padding`` (alone, or AND-ed with the layer's own mask as the encoder-decoder does):
    NaN/inf in padded input rows leave the real rows' outputs as in the clean run (padded rows are not meaningful)."""
    own_mask = None if own is None else masks.prefix_lm(2)
    layer = _layer(mask=own_mask, impl=impl, bias=True)
    pad = masks.key_padding(_padding())
    m = pad if own_mask is None else own_mask & pad
    x = _x(T=6)
    clean = layer(x, mask=m)
    out = layer(_poison(x), mask=m)
    valid = _padding()
    assert torch.isfinite(out[valid]).all()
    assert torch.allclose(out[valid], clean[valid], rtol=0, atol=TOL)
