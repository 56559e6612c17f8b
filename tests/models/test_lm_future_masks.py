"""The LM under the future-aware vision-language masks (``token_types=``; spec future_mask.md §3, invariants I4,
I6-I12 at model level).

A tiny random-init LM in float64 with "image features" as random embeddings at the visual positions. Exact
(bitwise) comparisons are against an explicit causal run (``kind="c"``) through the same backend; the native
``is_causal`` path, other backends and re-batched runs are compared with a tolerance (1e-10 in float64).
"""

from __future__ import annotations

import pytest
import torch

from attnlab.layers.capture import capture_attention
from attnlab.masks import TokenTypes, token_types
from attnlab.models import LM, LMConfig
from attnlab.models.lm.generate import generate_with_logits

V, CTX, D = 40, 32, 32
LAYOUT = "TTTT VVVV TTT VVV TTTT"  # prefix 0-3, image A 4-7, text 8-10, image B 11-13, question 14-17
VIS = token_types(LAYOUT)
L = VIS.numel()
TOL = dict(atol=1e-10, rtol=1e-10)


def model(n_layers: int = 2, impl: str = "reference", attention: str = "standard") -> LM:
    torch.manual_seed(0)
    m = LMConfig(vocab_size=V, n_layers=n_layers, d_model=D, n_heads=4, context_len=CTX, attention=attention)
    lm = m.build().to(torch.float64).eval()
    for b in lm.blocks:
        if hasattr(b.attn, "impl"):
            b.attn.impl = impl
    return lm


def embeds(lm: LM, B: int = 1, seed: int = 1) -> torch.Tensor:
    """Token embeddings at text positions, random "image features" at visual ones: ``(B, L, D)``."""
    g = torch.Generator().manual_seed(seed)
    e = lm.embed(torch.randint(0, V, (B, L), generator=g))
    return torch.where(VIS[None, :, None], torch.randn(B, L, D, generator=g, dtype=torch.float64), e)


@torch.no_grad()
def block_outputs(lm: LM, e: torch.Tensor, tt: TokenTypes | None) -> list[torch.Tensor]:
    """Every block's output ``(B, L, D)`` and the logits."""
    outs: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda mod, args, out: outs.append(out)) for b in lm.blocks]
    try:
        logits = lm(inputs_embeds=e, token_types=tt)
    finally:
        for h in hooks:
            h.remove()
    return [*outs, logits]


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_no_visual_tokens_is_bitwise_the_explicit_causal_run(impl: str) -> None:
    """I4: with V empty every kind gives the explicit causal run bit for bit, and the native run within 1e-10."""
    lm = model(impl=impl)
    e = embeds(lm, B=2)
    none = torch.zeros(2, L, dtype=torch.bool)
    explicit = block_outputs(lm, e, TokenTypes(is_visual=none, kind="c"))[-1]
    for kind in ("f", "v2v", "v2t"):
        assert torch.equal(block_outputs(lm, e, TokenTypes(is_visual=none, kind=kind))[-1], explicit)
    torch.testing.assert_close(block_outputs(lm, e, None)[-1], explicit, **TOL)


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
def test_prefix_and_first_layer_text_rows_are_exact(impl: str) -> None:
    """I6: every layer's states before the first image equal the causal ones bitwise; I7: layer-1 states at every
    text position too, while visual positions do change."""
    lm = model(impl=impl)
    e = embeds(lm)
    causal = block_outputs(lm, e, TokenTypes(is_visual=VIS, kind="c"))
    first = int(torch.nonzero(VIS).min())
    for kind in ("f", "v2v", "v2t"):
        outs = block_outputs(lm, e, TokenTypes(is_visual=VIS, kind=kind))
        for layer, (a, c) in enumerate(zip(outs, causal)):
            assert torch.equal(a[:, :first], c[:, :first]), (kind, layer)
        assert torch.equal(outs[0][:, ~VIS], causal[0][:, ~VIS]), kind
        assert not torch.equal(outs[0][:, VIS], causal[0][:, VIS]), kind


def test_text_rows_still_receive_future_information_indirectly() -> None:
    """I7 (spec §2.5): under M^v2t a later question token reaches an earlier text token through a visual state at
    layer 2, never at layer 1; under M^c it never does."""
    lm = model(n_layers=2)
    e = embeds(lm)
    e2 = e.clone()
    e2[:, 15] += 1.0  # a question token
    for kind, changes in (("v2t", True), ("c", False)):
        tt = TokenTypes(is_visual=VIS, kind=kind)
        a, b = block_outputs(lm, e, tt), block_outputs(lm, e2, tt)
        assert torch.equal(a[0][:, 8], b[0][:, 8])  # layer 1: text row 8 is causal
        assert (not torch.equal(a[1][:, 8], b[1][:, 8])) == changes, kind


@pytest.mark.parametrize(("j", "changed"), [(9, {"f", "v2t"}), (12, {"f", "v2v"})])
def test_directional_sensitivity(j: int, changed: set[str]) -> None:
    """I8: perturbing a later text token (9) changes an earlier visual state (5) at layer 1 under M^f and M^v2t
    only; a later visual token (12) under M^f and M^v2v only."""
    lm = model(n_layers=1)
    e = embeds(lm)
    e2 = e.clone()
    e2[:, j] += 1.0
    for kind in ("c", "f", "v2v", "v2t"):
        tt = TokenTypes(is_visual=VIS, kind=kind)
        diff = not torch.equal(block_outputs(lm, e, tt)[0][:, 5], block_outputs(lm, e2, tt)[0][:, 5])
        assert diff == (kind in changed), kind


@pytest.mark.parametrize("kind", ["f", "v2v", "v2t"])
def test_semantics_p_cached_decoding_equals_recomputation(kind: str) -> None:
    """I9/I10: masked prefill + cached causal decoding == recomputing the whole sequence under the P mask, with
    image embeddings in the prompt; the cache grows by one per step and its prompt entries never change."""
    lm = model()
    e = embeds(lm, B=2)
    tt = TokenTypes(is_visual=VIS, kind=kind)
    caches = lm.new_caches(2)
    with torch.no_grad():
        logits = lm(inputs_embeds=e, caches=caches, token_types=tt)[:, -1]  # (B, V)
        prompt_kv = [c.keys_values()[0].clone() for c in caches]
        seq = e
        for step in range(5):
            nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
            seq = torch.cat([seq, lm.embed(nxt)], dim=1)
            full = lm(inputs_embeds=seq, token_types=tt)[:, -1]  # recompute under allowed_P
            logits = lm(inputs_embeds=lm.embed(nxt), caches=caches, token_types=tt)[:, -1]
            torch.testing.assert_close(logits, full, **TOL)
            assert all(c.seq_len == L + step + 1 for c in caches)
            for c, k0 in zip(caches, prompt_kv):
                assert torch.equal(c.keys_values()[0][:, :, :L], k0)


def test_generate_p_cached_equals_recomputed_and_r() -> None:
    """I10 through ``generate``: P cached == P recomputed (tokens and logits); M^v2v under R == P (cached or not);
    M^f under R differs from P once tokens are generated and refuses a cache."""
    lm = model()
    prompt = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(3))
    run = lambda tt, cache: generate_with_logits(lm, prompt, 6, temperature=0, use_cache=cache, token_types=tt)  # noqa: E731
    for kind in ("f", "v2v", "v2t"):
        tt = TokenTypes(is_visual=VIS, kind=kind)
        (ta, la), (tb, lb) = run(tt, True), run(tt, False)
        assert torch.equal(ta, tb), kind
        for x, y in zip(la, lb):
            torch.testing.assert_close(x, y, **TOL)
    p_tokens, p_logits = run(TokenTypes(is_visual=VIS, kind="v2v"), True)
    for cache in (True, False):
        r_tokens, r_logits = run(TokenTypes(is_visual=VIS, kind="v2v", semantics="R"), cache)
        assert torch.equal(r_tokens, p_tokens)
        torch.testing.assert_close(torch.stack(r_logits), torch.stack(p_logits), **TOL)
    f_p = run(TokenTypes(is_visual=VIS, kind="f"), False)[1]
    f_r = run(TokenTypes(is_visual=VIS, kind="f", semantics="R"), False)[1]
    torch.testing.assert_close(f_r[0], f_p[0], **TOL)  # the first step sees the prompt only
    assert not torch.allclose(f_r[-1], f_p[-1], atol=1e-6)  # later, visual rows see the generated tokens
    with pytest.raises(ValueError, match=r"semantics='R' and kind='f' .* \(use_cache=False\)"):
        run(TokenTypes(is_visual=VIS, kind="f", semantics="R"), True)


@pytest.mark.parametrize("kind", ["c", "f", "v2v", "v2t"])
def test_left_padded_batch_equals_each_sample_alone(kind: str) -> None:
    """I11: a left-padded batch gives each sample's logits of its solo run (1e-10), and no attention weight of a
    real row falls on a pad key; I12: every output is finite."""
    lm = model()
    layouts = ["TT VVVV TT VV TTTT", "T VVV TTTT"]
    solo_vis = [token_types(s) for s in layouts]
    n = max(v.numel() for v in solo_vis)
    g = torch.Generator().manual_seed(5)
    solo_e = [torch.randn(1, v.numel(), D, generator=g, dtype=torch.float64) for v in solo_vis]
    vis = torch.zeros(2, n, dtype=torch.bool)
    keep = torch.zeros(2, n, dtype=torch.bool)
    e = torch.zeros(2, n, D, dtype=torch.float64)
    for b, (v, x) in enumerate(zip(solo_vis, solo_e)):
        vis[b, n - v.numel():], keep[b, n - v.numel():], e[b, n - v.numel():] = v, True, x[0]
    with torch.no_grad(), capture_attention(lm) as cap:
        batch = lm(inputs_embeds=e, token_types=TokenTypes(is_visual=vis, keep=keep, kind=kind))
    assert torch.isfinite(batch).all()
    for name, p in cap.all():  # (B, H, n, n): real rows give pad keys exactly 0
        assert (p[:, :, :, :][keep[:, None, :, None].expand_as(p) & ~keep[:, None, None, :]] == 0).all(), name
    for b, (v, x) in enumerate(zip(solo_vis, solo_e)):
        with torch.no_grad():
            alone = lm(inputs_embeds=x, token_types=TokenTypes(is_visual=v, kind=kind))
        torch.testing.assert_close(batch[b, n - v.numel():], alone[0], **TOL)


@pytest.mark.parametrize("kind", ["c", "f", "v2v", "v2t"])
def test_backends_agree_inside_the_lm(kind: str) -> None:
    """Dense reference, SDPA and FlexAttention (forward on CPU) give the same logits in float64."""
    vis = torch.stack([VIS, VIS.roll(3)])
    tt = TokenTypes(is_visual=vis, kind=kind)
    out = {}
    for impl in ("reference", "sdpa", "flex"):
        lm = model(impl=impl)
        with torch.no_grad():
            out[impl] = lm(inputs_embeds=embeds(lm, B=2), token_types=tt)
    torch.testing.assert_close(out["sdpa"], out["reference"], **TOL)
    torch.testing.assert_close(out["flex"], out["reference"], **TOL)


def test_bad_token_types_are_refused_by_name() -> None:
    lm = model()
    idx = torch.randint(0, V, (2, L))
    with pytest.raises(ValueError, match="token_types must be an attnlab.masks.TokenTypes or None, got Tensor"):
        lm(idx, token_types=VIS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"is_visual must be a torch.bool tensor .* got torch.int64 \(18,\)"):
        TokenTypes(is_visual=VIS.long())
    with pytest.raises(ValueError, match=r"token_types has batch size 3 \(is_visual/keep rows\) but the input has B=2"):
        lm(idx, token_types=TokenTypes(is_visual=VIS.expand(3, L)))
    with pytest.raises(ValueError, match=r"token_types types L=18 positions but the input ends at position 10"):
        lm(idx[:, :10], token_types=TokenTypes(is_visual=VIS))
    with pytest.raises(ValueError, match=r"semantics='R' and kind='v2t' .* \(caches=None\)"):
        lm(idx, caches=lm.new_caches(2), token_types=TokenTypes(is_visual=VIS, kind="v2t", semantics="R"))
    with pytest.raises(ValueError, match=r"prompt 18 \+ max_new_tokens=20 must fit context_len=32"):
        generate_with_logits(lm, idx, 20, temperature=0, token_types=TokenTypes(is_visual=VIS))
    torch.manual_seed(0)
    window = LMConfig(vocab_size=V, n_layers=2, d_model=D, n_heads=4, context_len=CTX,
                      attention="sliding-window").build()
    with pytest.raises(ValueError, match=r"every layer to be causal multi-head .* layer 1 uses 'sliding-window'"):
        window(idx, token_types=TokenTypes(is_visual=VIS))


# ------------------------------------------------------------------------------- future-light layers (spec §4)
def test_future_light_layers_get_the_token_types() -> None:
    """A ``future-light`` LM takes the same ``token_types``: its layers get ``is_visual``/``keep`` (their own ``mu``
    decides), states before the first image stay exactly causal while visual rows change, a left-padded batch equals
    each sample alone, and cached decoding after the merged prefill runs (decode calls get no visual token)."""
    lm = model(attention="future-light")
    std = model()
    std.load_state_dict(lm.state_dict())  # the same parameters: future-light is a drop-in causal layer
    e = embeds(lm, B=2)
    light = block_outputs(lm, e, TokenTypes(is_visual=VIS))
    causal = block_outputs(std, e, None)
    first = int(torch.nonzero(VIS).min())
    torch.testing.assert_close(light[-1][:, :first], causal[-1][:, :first], **TOL)
    assert not torch.allclose(light[0][:, VIS], causal[0][:, VIS], atol=1e-6)
    # left padding: the second sample alone equals its padded row
    keep = torch.ones(2, L, dtype=torch.bool)
    keep[1, :3] = False
    vis = VIS.expand(2, L).clone()
    vis[1] = torch.cat([torch.zeros(3, dtype=torch.bool), VIS[:-3]])
    e2 = e.clone()
    e2[1, 3:] = e[1, :-3]
    with torch.no_grad():
        batch = lm(inputs_embeds=e2, token_types=TokenTypes(is_visual=vis, keep=keep))
        alone = lm(inputs_embeds=e2[1:, 3:], token_types=TokenTypes(is_visual=vis[1, 3:]))
    torch.testing.assert_close(batch[1, 3:], alone[0], **TOL)
    # cached: prefill with the merge, then causal decoding with the padded keys still hidden
    caches = lm.new_caches(2)
    tt = TokenTypes(is_visual=vis, keep=keep)
    with torch.no_grad():
        pre = lm(inputs_embeds=e2, caches=caches, token_types=tt)
        step = lm(inputs_embeds=lm.embed(pre[:, -1].argmax(-1, keepdim=True)), caches=caches, token_types=tt)
    torch.testing.assert_close(pre, batch, **TOL)
    assert torch.isfinite(step).all() and all(c.seq_len == L + 1 for c in caches)


@pytest.mark.parametrize("kind", ["f", "v2v", "v2t"])
def test_decoding_steps_use_the_native_causal_path_and_equal_the_masked_ones(kind: str) -> None:
    """A call beyond the typed prompt holds only generated (text) rows: without padding the layers get no per-call
    mask (their own causal path), and the step equals the same step run under the future mask."""
    from attnlab.models.lm.token_types import check_token_types, with_types

    lm = model()
    tt = TokenTypes(is_visual=VIS, kind=kind)
    decode = check_token_types(tt, blocks=lm.blocks, mechanisms=["standard"] * 2, batch_size=1, offset=L, T=1,
                               cached=True)
    assert decode.mask is None and with_types(None, lm.blocks[0].attn, decode) is None
    prefill = check_token_types(tt, blocks=lm.blocks, mechanisms=["standard"] * 2, batch_size=1, offset=0, T=L,
                                cached=True)
    assert prefill.mask is tt.mask
    padded = TokenTypes(is_visual=VIS, kind=kind, keep=torch.arange(L) >= 2)
    assert check_token_types(padded, blocks=lm.blocks, mechanisms=["standard"] * 2, batch_size=1, offset=L, T=1,
                             cached=True).mask is padded.mask  # pad keys must stay hidden
    e = embeds(lm)
    with torch.no_grad():
        caches = lm.new_caches(1)
        nxt = lm(inputs_embeds=e, caches=caches, token_types=tt)[:, -1:].argmax(-1)
        fast = lm(nxt, caches=caches, token_types=tt)[:, -1]
        full = torch.cat([e, lm.embed(nxt)], dim=1)
        masked = lm(inputs_embeds=full, token_types=TokenTypes(is_visual=VIS, kind=kind))[:, -1]
    torch.testing.assert_close(fast, masked, **TOL)
