"""The future-light layer: registry entry and config defaults (spec future_mask.md 4.3), per-call token types, a
drop-in for a causal checkpoint, prefill + cached decoding == causal decoding on an unchanged cache (L4), padding,
refusals, and the verify check catching a layer that drops the merge."""

from __future__ import annotations

import warnings

import pytest
import torch

import attnlab.ops.future.api as api
from attnlab.layers import build, get
from attnlab.layers.future_light import LightFutureAttention, LightFutureConfig
from attnlab.masks import causal
from attnlab.verify import VerifyOptions, run_check
from attnlab.verify.core import CHECKS
from attnlab.verify.future import causal_twin, visual_layout

f64 = torch.float64


@pytest.fixture(autouse=True)
def _fresh_warning(monkeypatch):
    monkeypatch.setattr(api, "_said_no_visual", False)


def _layer(**opts) -> LightFutureAttention:
    torch.manual_seed(0)
    return build("future-light", d_model=24, n_heads=4, **opts).to(f64)


def _x(B: int = 2, T: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, 24, generator=torch.Generator().manual_seed(seed), dtype=f64)


def test_registered_with_the_spec_defaults():
    spec = get("future-light")
    assert spec.causal and spec.cache == "kv" and spec.backends == ("reference", "sdpa")
    c = spec.config(d_model=24, n_heads=4)
    assert (c.mu, c.pool, c.pool_size, c.n_slots, c.merge_mode) == ("f", "max", 7, 1, "add_logit")
    assert c.resolved_reduce == "max"
    assert LightFutureConfig(d_model=8, n_heads=2, pool="avg").resolved_reduce == "mean"
    assert LightFutureConfig(d_model=8, n_heads=2, merge_mode="lse_mass").resolved_reduce == "lse"


@pytest.mark.parametrize("kwargs,match", [
    (dict(pool_size=2), "pool_size must be an odd int"), (dict(mu="x"), "mu must be one of"),
    (dict(n_slots=2, merge_mode="lse_mass"), "lse_mass"), (dict(impl="dense"), "impl must be one of"),
    (dict(rope=True, head_dim=5), "even head_dim"), (dict(n_kv_heads=3), "n_kv_heads"),
])
def test_config_errors_name_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LightFutureConfig(d_model=24, n_heads=4, **kwargs)


def test_drop_in_for_a_causal_checkpoint_and_causal_without_visual_tokens():
    layer = _layer(n_kv_heads=2, rope=True)
    std = build("gqa", d_model=24, n_heads=4, n_kv_heads=2, rope=True).to(f64)
    std.load_state_dict(layer.state_dict())  # same parameter names and shapes
    x = _x()
    assert torch.equal(layer(x), std(x))  # no token types: every token is text
    with pytest.warns(UserWarning, match="no visual token"):
        assert torch.equal(layer(x, is_visual=torch.zeros(12, dtype=torch.bool)), std(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        layer(x, is_visual=torch.zeros(2, 12, dtype=torch.bool))


@pytest.mark.parametrize("impl", ["reference", "sdpa"])
@pytest.mark.parametrize("opts", [dict(), dict(n_kv_heads=2, rope=True, mu="v2t", pool="avg", pool_size=3),
                                  dict(mu="v2v", merge_mode="lse_mass")])
def test_decode_after_prefill_is_causal_decoding_on_an_unchanged_cache(impl, opts):
    """L4: the cache holds the causal keys/values; each decoding step equals the causal twin's."""
    layer = _layer(impl=impl, **opts)
    twin = causal_twin(layer)
    x, steps, iv = _x(), _x(T=4, seed=1), visual_layout(2, 12)
    with torch.no_grad():
        cache, twin_cache = layer.new_cache(2), twin.new_cache(2)
        prefill = layer(x, cache=cache, is_visual=iv)
        assert torch.equal(prefill, layer(x, is_visual=iv))  # writing the cache changes nothing
        twin(x, cache=twin_cache)
        assert cache.seq_len == 12 and torch.equal(cache._k[:, :, :12], twin_cache._k[:, :, :12])
        assert torch.equal(cache._v[:, :, :12], twin_cache._v[:, :, :12])
        for i in range(4):
            got = layer(steps[:, i: i + 1], cache=cache, is_visual=torch.zeros(2, 1, dtype=torch.bool))
            torch.testing.assert_close(got, twin(steps[:, i: i + 1], cache=twin_cache), atol=1e-12, rtol=0)
        assert cache.seq_len == 16


def test_left_padded_batch_prefill_and_decoding_match_each_sample_alone():
    layer = _layer(n_kv_heads=2, rope=True)
    x, steps, iv = _x(), _x(T=3, seed=2), visual_layout(2, 12)
    pad = 3
    xb = torch.cat([torch.cat([_x(1, pad, seed=3 + b), x[b: b + 1]], 1) for b in range(2)])  # (2, pad + 12, C)
    keep = torch.ones(2, pad + 12, dtype=torch.bool)
    keep[:, :pad] = False
    ivb = torch.cat([torch.zeros(2, pad, dtype=torch.bool), iv], 1)
    with torch.no_grad():
        cache = layer.new_cache(2)
        outs = [layer(xb, cache=cache, is_visual=ivb, key_valid=keep)[:, pad:]]
        for i in range(3):
            keep = torch.cat([keep, torch.ones(2, 1, dtype=torch.bool)], 1)
            outs.append(layer(steps[:, i: i + 1], cache=cache, key_valid=keep))
        for b in range(2):
            alone = layer.new_cache(1)
            want = [layer(x[b: b + 1], cache=alone, is_visual=iv[b])]
            want += [layer(steps[b: b + 1, i: i + 1], cache=alone) for i in range(3)]
            torch.testing.assert_close(torch.cat([o[b: b + 1] for o in outs], 1), torch.cat(want, 1), atol=1e-12,
                                       rtol=0)


def test_refusals_name_the_argument():
    layer = _layer()
    x, iv = _x(), visual_layout(2, 12)
    cache = layer.new_cache(2)
    layer(x, cache=cache, is_visual=iv)
    with pytest.raises(ValueError, match=r"is_visual: visual tokens are only allowed in the prefill"):
        layer(x[:, :1], cache=cache, is_visual=torch.ones(2, 1, dtype=torch.bool))
    assert cache.seq_len == 12  # refused before the cache moved
    with pytest.raises(ValueError, match="not a per-call mask"):
        layer(x, mask=causal())
    with pytest.raises(ValueError, match="context must be None"):
        layer(x, context=x)
    with pytest.raises(ValueError, match=r"key_valid must have length L=12"):
        layer(x, is_visual=iv, key_valid=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"is_visual must have length L=12"):
        layer(x, is_visual=iv[:, :4])
    first = iv.clone()
    first[0, 0] = True
    fresh = layer.new_cache(2)
    with pytest.raises(ValueError, match="sink slot at position 0 of sample 0 is not before"):
        layer(x, cache=fresh, is_visual=first)
    assert fresh.seq_len == 0


class _NoMerge(LightFutureAttention):
    """Broken on purpose: drops the token types, so visual rows never see the future."""

    def forward(self, x, *, context=None, cache=None, is_visual=None, key_valid=None):
        return super().forward(x, cache=cache, key_valid=key_valid)


def test_verify_check_passes_and_catches_a_layer_without_the_merge(monkeypatch):
    check = CHECKS.get("future-light")
    spec = get("future-light")
    assert all(r.passed for r in run_check(check, spec, VerifyOptions(seq_len=9)))
    monkeypatch.setattr(LightFutureConfig, "build", lambda self: _NoMerge(self))
    failed = [r.case for r in run_check(check, spec, VerifyOptions(seq_len=9)) if not r.passed]
    assert failed == ["reference: visual rows see later inputs", "sdpa: visual rows see later inputs"]


# ------------------------------------------------------------------------------ sink diagnostic (spec 4.7)
def test_sink_mass_equals_a_hand_computation():
    """Default merge (max pooling, max reduce, one slot, add_logit): row i's merge is the largest admitted future
    score, added to the logit of position 0; the diagnostic is the slot's probability before and after."""
    from attnlab.ops.future import sink_mass

    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 2, 9, 8, generator=g, dtype=f64), torch.randn(2, 2, 9, 8, generator=g, dtype=f64)
    iv = torch.zeros(2, 9, dtype=torch.bool)
    iv[0, 2:5] = True
    iv[1, 1:8] = True
    before, after = [], []
    for b in range(2):
        for h in range(2):
            s = (q[b, h] @ k[b, h].T) / 8 ** 0.5  # (9, 9)
            for i in range(9):
                if not iv[b, i] or i == 8:
                    continue  # a text row, or the last position (no future)
                row = s[i, : i + 1]
                before.append(torch.softmax(row, 0)[0])
                row = row.clone()
                row[0] += s[i, i + 1 :].max()
                after.append(torch.softmax(row, 0)[0])
    got = sink_mass(q, k, is_visual=iv)
    assert got.rows == len(before) == 2 * (3 + 7)
    assert got.before == pytest.approx(float(torch.stack(before).mean()), abs=1e-14)
    assert got.after == pytest.approx(float(torch.stack(after).mean()), abs=1e-14)
    none = sink_mass(q, k, is_visual=torch.zeros(9, dtype=torch.bool))
    assert none.rows == 0 and none.before != none.before  # nan: nothing merges


def test_record_sink_mass_logs_each_layer_during_the_block_only():
    from attnlab.layers.future_light import record_sink_mass
    from attnlab.masks.vlm import TokenTypes
    from attnlab.models.lm import LMConfig

    torch.manual_seed(0)
    lm = LMConfig(vocab_size=11, n_layers=2, d_model=24, n_heads=4, context_len=16, attention="future-light").build()
    lm = lm.to(f64)
    iv = torch.zeros(12, dtype=torch.bool)
    iv[2:7] = True
    x = torch.randn(2, 12, 24, dtype=f64)
    with record_sink_mass(lm) as log:
        lm(inputs_embeds=x, token_types=TokenTypes(is_visual=iv))
        lm(inputs_embeds=x)  # no token types: causal, nothing merges, nothing logged
    assert list(log) == ["blocks.0.attn", "blocks.1.attn"]
    assert all(len(v) == 1 and v[0].rows == 2 * 4 * 5 for v in log.values())
    assert all(0.0 < v[0].before < 1.0 and 0.0 < v[0].after < 1.0 for v in log.values())
    lm(inputs_embeds=x, token_types=TokenTypes(is_visual=iv))
    assert all(len(v) == 1 for v in log.values())  # the block has ended
    with pytest.raises(ValueError, match="no future-light layer"):
        with record_sink_mass(torch.nn.Linear(2, 2)):
            pass
