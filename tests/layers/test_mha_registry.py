"""Registry entries of the classic softmax mechanisms: options, defaults, validation, what each one builds."""

from __future__ import annotations

import pytest
import torch

from attnlab.cache.kv import KVCache, SlidingKVCache
from attnlab.layers import registry
from attnlab.layers.classic import CLASSIC_BACKENDS, gqa_kv_heads
from attnlab.layers.mha import MultiHeadAttention, MultiHeadAttentionConfig

NAMES = ["standard", "bidirectional", "gqa", "mqa", "luong-dot", "luong-general", "bahdanau",
         "sliding-window", "strided", "fixed", "bigbird", "prefix-lm"]


def test_all_registered() -> None:
    assert set(NAMES) <= set(registry.names())


@pytest.mark.parametrize("name", NAMES)
def test_builds_and_runs_at_verify_sizes(name: str) -> None:
    spec = registry.get(name)
    layer = spec.build(d_model=24, n_heads=4, **spec.verify_options).double().eval()
    assert isinstance(layer, MultiHeadAttention)
    assert layer.causal == spec.causal
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    with torch.no_grad():
        assert layer(x).shape == (2, 9, 24)
        if spec.cross:
            assert layer(x, context=torch.randn(2, 4, 24, dtype=torch.float64)).shape == (2, 9, 24)
    for impl in spec.backends:
        layer.impl = impl  # every listed backend is a valid impl
    if spec.cache == "sliding-kv":
        assert isinstance(layer.new_cache(2), SlidingKVCache)
    elif spec.cache == "kv":
        assert type(layer.new_cache(2)) is KVCache


def test_defaults_and_options() -> None:
    def cfg(name: str, **kw) -> MultiHeadAttentionConfig:
        return registry.get(name).config(d_model=64, n_heads=8, **kw)

    assert cfg("standard").mask.plain_causal and cfg("standard").score == "scaled_dot"
    assert cfg("bidirectional").mask is None
    assert cfg("gqa").resolved_n_kv_heads == 4 and cfg("gqa", n_kv_heads=2).resolved_n_kv_heads == 2
    assert cfg("mqa").resolved_n_kv_heads == 1
    assert cfg("luong-dot").score == "dot" and cfg("luong-general").score == "general"
    assert cfg("bahdanau").score == "additive" and cfg("bahdanau", additive_dim=3).additive_dim == 3
    assert cfg("sliding-window").mask.window == 64 and cfg("sliding-window", window=5).mask.window == 5
    assert cfg("strided").mask.name == "strided(stride=16)"
    assert cfg("fixed", block=8).mask.name == "fixed(block=8, summary=2)"
    assert cfg("bigbird").mask.name == "bigbird(window=32, n_global=2, n_random=4, seed=0)"
    assert cfg("prefix-lm", prefix_len=3).mask.name == "prefix_lm(prefix_len=3)"
    assert cfg("standard", rope=True, head_dim=16, impl="reference", bias=True).rope
    # make_config alone (without the spec's defaults) also has them
    assert registry.get("sliding-window").make_config(d_model=8, n_heads=2).mask.window == 64


def test_gqa_default_heads() -> None:
    assert [gqa_kv_heads(n) for n in (1, 2, 3, 4, 5, 6, 8, 12)] == [1, 1, 1, 2, 1, 3, 4, 6]
    for n in range(1, 17):
        assert n % gqa_kv_heads(n) == 0  # always a valid GQA grouping


@pytest.mark.parametrize("name, bad", [
    ("standard", "window"), ("sliding-window", "windw"), ("mqa", "n_kv_heads"), ("luong-dot", "additive_dim"),
    ("bigbird", "stride"), ("prefix-lm", "prefix"), ("strided", "score"), ("gqa", "mask"),
])
def test_unknown_options_rejected(name: str, bad: str) -> None:
    with pytest.raises(TypeError, match=rf"{name}: unknown option\(s\) '{bad}'; valid options: "):
        registry.get(name).config(d_model=24, n_heads=4, **{bad: 1})


@pytest.mark.parametrize("name, kw, match", [
    ("sliding-window", dict(window=0), "window must be an int >= 1, got 0"),
    ("fixed", dict(block=4, summary=5), r"summary must be an int in \[1, block=4\], got 5"),
    ("gqa", dict(n_kv_heads=3), "n_kv_heads=3 must divide n_heads=4"),
    ("standard", dict(impl="triton"), "impl must be one of"),
])
def test_bad_option_values(name: str, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        registry.get(name).config(d_model=24, n_heads=4, **kw)


def test_backends() -> None:
    for name in NAMES:
        spec = registry.get(name)
        assert spec.backends[0] == "reference"
        assert spec.backends == (("reference",) if name == "bahdanau" else CLASSIC_BACKENDS)
    # flex has no CPU backward in torch 2.13: listed only where CUDA is available
    assert ("flex" in CLASSIC_BACKENDS) == torch.cuda.is_available()


def test_prefix_lm_spec_advertises_no_generic_cache() -> None:
    spec = registry.get("prefix-lm")
    assert spec.cache is None and not spec.causal
    layer = spec.build(d_model=24, n_heads=4, **spec.verify_options)
    assert type(layer.new_cache(1)) is KVCache  # decoding works under the whole-prefix rule


def test_bidirectional_with_cross_true_is_a_cross_attention_layer() -> None:
    """README: ``bidirectional`` is unmasked attention, "with ``cross=True``, encoder-decoder cross-attention"."""
    layer = registry.build("bidirectional", d_model=24, n_heads=4, cross=True).double()
    assert isinstance(layer, MultiHeadAttention) and layer.cross and layer.mask is None
    x, c = torch.randn(2, 5, 24, dtype=torch.float64), torch.randn(2, 7, 24, dtype=torch.float64)
    assert layer(x, context=c).shape == (2, 5, 24)
    with pytest.raises(ValueError, match="cross-attention layer \\(cross=True\\): forward needs context"):
        layer(x)
    with pytest.raises(ValueError, match="rope=True is not supported with cross=True"):
        registry.build("bidirectional", d_model=24, n_heads=4, cross=True, rope=True)
    assert not registry.build("bidirectional", d_model=24, n_heads=4).cross  # self-attention by default
