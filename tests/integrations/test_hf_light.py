"""attnlab.integrations.hf: light future-aware attention (the "+merge" variant, spec future_mask.md §4, §5.5) as the
transformers ``AttentionInterface`` function ``"attnlab_future_light"`` on tiny LLaVA and Qwen2-VL models.

Invariants (spec §6, L1-L6 at the model level): the registered function reaches attnlab's
``light_future_attention`` with the right token types and key validity, once per scheduled layer of the prefill and
never while decoding; positions before the first image are causal (L2); decoding after the light prefill is the
model's own cached attention on native-shaped caches (L4); k-invariance of the max/max default (L6); a left-padded
batch equals each sample alone; the reference and SDPA forms agree inside the model.
"""

from __future__ import annotations


import pytest
import torch
from hf_tiny import NO_TRANSFORMERS, Tiny, cache_of, one_decode_step

pytest.importorskip("transformers", reason=NO_TRANSFORMERS)
from attnlab.integrations import hf  # noqa: E402

TWO_IMAGES = "TT VVVV T VVVV TTT"


def _logits(t: Tiny, inputs: dict) -> torch.Tensor:
    return t.model(**inputs).logits


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record the keyword arguments of every light_future_attention call made through the integration."""
    calls: list[dict] = []
    real = hf.light_future_attention

    def spy(q, k, v, **kw):
        calls.append(dict(kw, q_len=q.shape[-2]))
        return real(q, k, v, **kw)

    monkeypatch.setattr(hf, "light_future_attention", spy)
    return calls


def test_registered_with_transformers() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    assert hf.LIGHT_ATTENTION in AttentionInterface._global_mapping
    assert hf.LIGHT_ATTENTION in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping


def test_light_prefill_reaches_attnlab_with_the_token_types(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy(monkeypatch)
    inputs = tiny.inputs(TWO_IMAGES, "TTT VVVV TT")  # left-padded batch
    n_layers = len(tiny.language_model.layers)
    attn = tiny.language_model.config._attn_implementation
    with hf.apply_light_future(tiny.model, mu="v2t", pool_size=3):
        assert tiny.language_model.config._attn_implementation == hf.LIGHT_ATTENTION
        tiny.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert tiny.language_model.config._attn_implementation == attn  # restored
    assert len(calls) == n_layers  # the prefill only: decoding steps are plain SDPA
    for c in calls:
        assert torch.equal(c["is_visual"], inputs["input_ids"] == tiny.image_id)
        assert torch.equal(c["key_valid"], inputs["attention_mask"].bool())
        assert c["mu"] == "v2t" and c["pool_size"] == 3 and c["reduce"] == "max" and c["n_slots"] == 1
    calls.clear()
    with hf.apply_light_future(tiny.model, layers=[1]):
        tiny.model(**tiny.inputs(TWO_IMAGES))
        tiny.model(**tiny.inputs("TTTTT"))  # no image: no merge anywhere
    assert len(calls) == 1


def test_light_changes_visual_rows_only_in_their_sink_weight(tiny: Tiny) -> None:
    inputs = tiny.inputs(TWO_IMAGES)
    vis = (inputs["input_ids"] == tiny.image_id)[0]
    first = int(vis.nonzero()[0])
    base = tiny.model(**inputs, output_hidden_states=True).hidden_states
    with hf.apply_light_future(tiny.model):
        light = tiny.model(**inputs, output_hidden_states=True).hidden_states
    tol = 1e-6 if tiny.language_model.config._attn_implementation == "eager" else 1e-12  # eager: float32 softmax
    for layer in range(len(base)):  # L2: positions before the first image stay causal at every layer
        assert torch.allclose(light[layer][0, :first], base[layer][0, :first], rtol=0, atol=tol)
    assert torch.allclose(light[1][0, ~vis], base[1][0, ~vis], rtol=0, atol=tol)  # text rows of layer 1
    assert not torch.allclose(light[1][0, vis], base[1][0, vis], rtol=0, atol=1e-6)


def test_l4_decoding_after_the_light_prefill_is_plain_cached_attention(tiny_sdpa: Tiny) -> None:
    t = tiny_sdpa
    inputs = t.inputs(TWO_IMAGES)
    L = inputs["input_ids"].shape[1]
    native = cache_of(t.model(**inputs, use_cache=True))
    prefill, _, inside, outside = one_decode_step(t, hf.apply_light_future(t.model), inputs)
    assert torch.equal(inside.logits, outside.logits)
    assert cache_of(inside).get_seq_length() == L + 1
    for a, b in zip(cache_of(prefill).layers, native.layers):
        assert a.keys.shape[:-2] == b.keys.shape[:-2] and a.values.shape[:-2] == b.values.shape[:-2]


def test_l6_k_invariance_and_reference_equals_sdpa(tiny_sdpa: Tiny) -> None:
    t = tiny_sdpa
    inputs = t.inputs(TWO_IMAGES)
    outs = {}
    for impl in ("reference", "sdpa"):
        for k in (1, 3, 7, 25):
            with hf.apply_light_future(t.model, pool_size=k, impl=impl):
                outs[impl, k] = _logits(t, inputs)
    for k in (3, 7, 25):
        assert torch.equal(outs["reference", k], outs["reference", 1])
    assert torch.allclose(outs["sdpa", 7], outs["reference", 7], rtol=0, atol=1e-10)
    with hf.apply_light_future(t.model, pool="avg", pool_size=3, n_slots=1):
        avg = _logits(t, inputs)
    assert not torch.allclose(avg, outs["sdpa", 7], rtol=0, atol=1e-8)


def test_light_left_padded_batch_equals_each_sample_alone(tiny_sdpa: Tiny) -> None:
    t = tiny_sdpa
    layouts = (TWO_IMAGES, "TTT VVVV TT")

    def run(inputs: dict) -> torch.Tensor:
        if t.family == "llava":
            inputs = dict(inputs, position_ids=(inputs["attention_mask"].cumsum(1) - 1).clamp_min(0))
        return _logits(t, inputs)

    with hf.apply_light_future(t.model, mu="f"):
        together = run(t.inputs(*layouts))
        for b, layout in enumerate(layouts):
            alone = run(t.inputs(layout, images=[0, 1] if b == 0 else [2]))
            n = alone.shape[1]
            assert torch.allclose(together[b, -n:], alone[0], rtol=0, atol=1e-10)


def test_light_generate_and_errors(tiny_sdpa: Tiny) -> None:
    t = tiny_sdpa
    inputs = t.inputs(TWO_IMAGES)
    base = t.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with hf.apply_light_future(t.model):
        out = t.model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert out.shape == base.shape and torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
        with pytest.raises(ValueError, match="use_cache=False"):
            t.model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False)
        with pytest.raises(ValueError, match="already patched"):
            hf.apply_light_future(t.model)
        with pytest.raises(ValueError, match="static"):  # LLaVA: in the attention; Qwen2-VL: its mask dict
            t.model.generate(**inputs, max_new_tokens=2, do_sample=False, cache_implementation="static")
    with hf.apply_light_future(t.model, delimiters_as="V"):  # Qwen2-VL: <|vision_start|> becomes visual
        with pytest.raises(ValueError, match="sink slot .* is not before its first visual token"):
            t.model(**t.inputs("VVVV TT"))
    for kwargs, match in ((dict(mu="c"), "mu must be one of"), (dict(pool_size=4), "pool_size must be an odd"),
                          (dict(n_slots=0), "n_slots must be"), (dict(layers=[2]), r"layers must be .*\[0, 2\)"),
                          (dict(impl="flex"), "impl must be one of"), (dict(merge_mode="x"), "merge_mode must be")):
        with pytest.raises(ValueError, match=match):
            hf.apply_light_future(t.model, **kwargs)
    assert torch.equal(t.model.generate(**inputs, max_new_tokens=3, do_sample=False), base)  # fully removed
