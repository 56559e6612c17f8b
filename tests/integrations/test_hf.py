"""attnlab.integrations.hf: future-aware masks on tiny transformers VLMs (LLaVA, Qwen2-VL; eager and SDPA).

Invariants of spec future_mask.md §6 at the model level: I13 (the masks the layers receive equal transformers' own
``create_causal_mask`` with ``block_sequence_ids`` for one image, and exceed it by exactly the cross-image forward
edges for two), I14 (nothing but the masks changes), I6/I7 (text rows before the first image and at layer 1), I8
(directional sensitivity), I9/I10 (cached decoding == recomputing under P), I11 (left padding). The tiny models
are float64; "bitwise" comparisons use ``torch.equal``.
"""

from __future__ import annotations


import pytest
import torch
from hf_tiny import ATTNS, CACHE, NO_TRANSFORMERS, Tiny, _build, cache_of, one_decode_step

from attnlab.masks import dense
from attnlab.masks.vlm import future_mask

pytest.importorskip("transformers", reason=NO_TRANSFORMERS)
from attnlab.integrations import hf  # noqa: E402

MASKED = ("f", "v2v", "v2t")
SCORE_TOL = 1e-6  # generate() returns float32 scores of the float64 logits: one float32 rounding apart
TWO_IMAGES = "TT VVVV T VVVV TTT"


def _logits(t: Tiny, inputs: dict, **kw: object) -> torch.Tensor:
    return t.model(**inputs, **kw).logits


def _hidden(t: Tiny, inputs: dict) -> tuple[torch.Tensor, ...]:
    return t.model(**inputs, output_hidden_states=True).hidden_states


def _layer_mask(t: Tiny, inputs: dict) -> torch.Tensor:
    """The allowed pairs (B, L, L) that decoder layer 0 receives in a forward over ``inputs``."""
    seen: list[torch.Tensor] = []
    h = t.language_model.layers[0].register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["attention_mask"]), with_kwargs=True)
    try:
        t.model(**inputs)
    finally:
        h.remove()
    m = seen[0]
    return (m if m.dtype == torch.bool else m == 0)[:, 0]


def _visual(t: Tiny, inputs: dict) -> torch.Tensor:
    return inputs["input_ids"] == t.image_id


def test_kind_c_and_text_only_prompts_are_the_unpatched_model(tiny: Tiny) -> None:
    inputs, text = tiny.inputs(TWO_IMAGES), tiny.inputs("TTTTTTT")
    base, base_text = _logits(tiny, inputs), _logits(tiny, text)
    base_gen = tiny.model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with hf.apply_future_mask(tiny.model, "c"):
        assert torch.equal(_logits(tiny, inputs), base)
        assert torch.equal(tiny.model.generate(**inputs, max_new_tokens=3, do_sample=False), base_gen)
    with hf.apply_future_mask(tiny.model, "f"):
        assert torch.equal(_logits(tiny, text), base_text)  # no visual token: the model's own path


@pytest.mark.parametrize("kind", MASKED)
def test_layers_receive_the_attnlab_mask(tiny: Tiny, kind: str) -> None:
    inputs = tiny.inputs(TWO_IMAGES, "TTT VVVV TT")  # left-padded batch of two
    keep = inputs["attention_mask"].bool()
    with hf.apply_future_mask(tiny.model, kind):
        got = _layer_mask(tiny, inputs)
    L = keep.shape[1]
    want = dense(future_mask(kind, _visual(tiny, inputs), keep=keep), L, L, batch_size=2)[:, 0]
    assert torch.equal(got, want)  # including the diagonal of left-pad rows (spec §1.4)
    assert not (got & ~keep[:, None, :] & ~torch.eye(L, dtype=torch.bool)).any()  # no other row sees a pad key


def _groups(vis: torch.Tensor) -> torch.Tensor:
    """block_sequence_ids: -1 for text, k for the k-th visual run of each row."""
    start = vis & ~torch.nn.functional.pad(vis, (1, 0))[:, :-1]
    return torch.where(vis, start.long().cumsum(1) - 1, -1)


def test_i13_v2v_against_transformers_blockwise_overlay(tiny: Tiny) -> None:
    from transformers.masking_utils import create_causal_mask

    for layout, n_images in (("TT VVVV TTT", 1), (TWO_IMAGES, 2)):
        inputs = tiny.inputs(layout)
        vis = _visual(tiny, inputs)
        with hf.apply_future_mask(tiny.model, "v2v"):
            got = _layer_mask(tiny, inputs)
        L = vis.shape[1]
        oracle = create_causal_mask(config=tiny.language_model.config, inputs_embeds=torch.zeros(1, L, 1),
                                    attention_mask=inputs["attention_mask"], block_sequence_ids=_groups(vis),
                                    **{hf._cache_kwarg(): None})  # `cache` (past_key_values before 5.2x)
        oracle = (oracle if oracle.dtype == torch.bool else oracle == 0)[:, 0]
        if n_images == 1:
            assert torch.equal(got, oracle)
        else:
            groups = _groups(vis)[0]
            q, k = torch.meshgrid(torch.arange(L), torch.arange(L), indexing="ij")
            cross = vis[0][q] & vis[0][k] & (k > q) & (groups[q] != groups[k])
            assert cross.any() and torch.equal(got[0] & ~oracle[0], cross) and not (oracle & ~got).any()


def test_i14_nothing_but_the_masks_changes(tiny: Tiny) -> None:
    inputs = tiny.inputs(TWO_IMAGES)
    lm = tiny.language_model

    def capture() -> dict:
        seen: dict = {}
        hooks = [lm.register_forward_pre_hook(lambda mod, args, kw: seen.update(kw), with_kwargs=True),
                 lm.rotary_emb.register_forward_hook(
                     lambda mod, args, kw, out: seen.update(rope=(kw.get("position_ids", args[-1]), *out)),
                     with_kwargs=True)]
        try:
            out = tiny.model(**inputs, use_cache=True, output_hidden_states=True)
        finally:
            for h in hooks:
                h.remove()
        seen["out"] = out
        return seen

    base = capture()
    with hf.apply_future_mask(tiny.model, "f"):
        patched = capture()
    assert torch.equal(patched["inputs_embeds"], base["inputs_embeds"])  # embeddings and vision tower
    for a, b in zip(patched["rope"], base["rope"]):  # RoPE / M-RoPE positions, cos, sin
        assert torch.equal(a, b)
    cb, cp = cache_of(base["out"]), cache_of(patched["out"])
    assert cb.get_seq_length() == cp.get_seq_length() == inputs["input_ids"].shape[1]
    for lb, lp in zip(cb.layers, cp.layers):
        assert lb.keys.shape == lp.keys.shape and lb.values.shape == lp.values.shape
    assert torch.equal(cb.layers[0].keys, cp.layers[0].keys)  # layer-0 keys come from the unchanged embeddings
    # I6: positions before the first image at every layer; I7: every text row of layer 1
    vis = _visual(tiny, inputs)[0]
    first = int(vis.nonzero()[0])
    hb, hp = base["out"].hidden_states, patched["out"].hidden_states
    same = torch.equal if lm.config._attn_implementation == "eager" else (
        lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-12))  # sdpa: explicit mask vs native is_causal
    for layer in range(len(hb)):
        assert same(hp[layer][0, :first], hb[layer][0, :first])
    assert same(hp[1][0, ~vis], hb[1][0, ~vis]) and not torch.equal(hp[1][0, vis], hb[1][0, vis])


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("family", ("llava", "qwen2_vl"))
def test_i8_directional_sensitivity(family: str, attn: str) -> None:
    t = _build(family, attn)
    inputs = t.inputs(TWO_IMAGES)
    row = int(_visual(t, inputs)[0].nonzero()[0])  # the first visual token of image 1
    later_text = dict(inputs, input_ids=inputs["input_ids"].clone())
    later_text["input_ids"][0, -1] = 50  # the last question word
    later_image = t.inputs(TWO_IMAGES, images=[0, 5])  # image 2 gets other pixels
    expected = {"c": (False, False), "f": (True, True), "v2v": (False, True), "v2t": (True, False)}
    for kind, (sees_text, sees_image) in expected.items():
        with hf.apply_future_mask(t.model, kind):
            base = _hidden(t, inputs)[1][0, row]
            assert (not torch.equal(_hidden(t, later_text)[1][0, row], base)) == sees_text, kind
            assert (not torch.equal(_hidden(t, later_image)[1][0, row], base)) == sees_image, kind


@pytest.mark.parametrize("kind", MASKED)
def test_i10_cached_generate_equals_recompute_under_p(tiny: Tiny, kind: str) -> None:
    inputs = tiny.inputs(TWO_IMAGES)
    opts = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with hf.apply_future_mask(tiny.model, kind):
        cached = tiny.model.generate(**inputs, **opts)
        recomputed = tiny.model.generate(**inputs, use_cache=False, **opts)
    assert torch.equal(cached.sequences, recomputed.sequences)
    for a, b in zip(cached.scores, recomputed.scores):
        assert torch.allclose(a, b, rtol=0, atol=SCORE_TOL)
    if kind == "c":
        return
    with hf.apply_future_mask(tiny.model, kind, semantics="R"):
        if kind == "v2v":  # R == P exactly (spec §3), cached decoding stays valid
            r = tiny.model.generate(**inputs, **opts)
            assert torch.equal(r.sequences, cached.sequences)
            assert all(torch.allclose(a, b, rtol=0, atol=SCORE_TOL) for a, b in zip(r.scores, cached.scores))
        else:  # visual rows see generated tokens: only a recompute can run it, and it differs after step 1
            with pytest.raises(ValueError, match="use_cache=False"):
                tiny.model.generate(**inputs, **opts)
            r = tiny.model.generate(**inputs, use_cache=False, **opts)
            assert torch.allclose(r.scores[0], cached.scores[0], rtol=0, atol=SCORE_TOL)
            assert not torch.allclose(r.scores[1], recomputed.scores[1], rtol=0, atol=1e-4)


def test_i9_decoding_after_the_masked_prefill_is_the_models_own(tiny: Tiny) -> None:
    inputs = tiny.inputs(TWO_IMAGES)
    L = inputs["input_ids"].shape[1]
    _, kv0, inside, outside = one_decode_step(tiny, hf.apply_future_mask(tiny.model, "f"), inputs)
    assert torch.equal(inside.logits, outside.logits)
    assert cache_of(inside).get_seq_length() == L + 1
    for (k, v), layer in zip(kv0, cache_of(inside).layers):
        assert torch.equal(layer.keys[:, :, :L], k) and torch.equal(layer.values[:, :, :L], v)


def test_i11_left_padded_batch_equals_each_sample_alone(tiny: Tiny) -> None:
    layouts = (TWO_IMAGES, "TTT VVVV TT")

    def run(inputs: dict) -> torch.Tensor:
        if tiny.family == "llava":  # left padding shifts LLaVA's default positions (Qwen2-VL derives them itself)
            inputs = dict(inputs, position_ids=(inputs["attention_mask"].cumsum(1) - 1).clamp_min(0))
        return _logits(tiny, inputs)

    # transformers' eager attention takes its softmax in float32, whatever the model's dtype
    tol = 1e-6 if tiny.language_model.config._attn_implementation == "eager" else 1e-10
    with hf.apply_future_mask(tiny.model, "f"):
        together = run(tiny.inputs(*layouts))
        assert torch.isfinite(together).all()  # pad rows keep their diagonal: no NaN, even in float64 eager
        for b, layout in enumerate(layouts):
            alone = run(tiny.inputs(layout, images=[0, 1] if b == 0 else [2]))
            n = alone.shape[1]
            assert torch.allclose(together[b, -n:], alone[0], rtol=0, atol=tol)


def test_remove_restores_the_model(tiny: Tiny) -> None:
    inputs = tiny.inputs(TWO_IMAGES)
    base = _logits(tiny, inputs)
    patch = hf.apply_future_mask(tiny.model, "f")
    assert not torch.equal(_logits(tiny, inputs), base)
    patch.remove()
    patch.remove()  # idempotent
    assert torch.equal(_logits(tiny, inputs), base)
    assert "generate" not in vars(tiny.model) and not tiny.model._forward_pre_hooks
    assert not tiny.language_model._forward_pre_hooks and not tiny.language_model._forward_hooks


def test_errors_name_the_argument(tiny_sdpa: Tiny, qwen2_vl_factory) -> None:
    t = tiny_sdpa
    import transformers

    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(hidden_size=16, intermediate_size=32,
                                                                  num_hidden_layers=1, num_attention_heads=2,
                                                                  vocab_size=32))
    with pytest.raises(ValueError, match="model must be one of .*LlavaForConditionalGeneration.*LlamaForCausalLM"):
        hf.apply_future_mask(llama, "f")
    with pytest.raises(ValueError, match="kind must be one of"):
        hf.apply_future_mask(t.model, "v2x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="semantics must be one of"):
        hf.apply_future_mask(t.model, "f", semantics="Q")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delimiters_as must be one of"):
        hf.apply_future_mask(t.model, "f", delimiters_as="X")  # type: ignore[arg-type]
    config = t.language_model.config
    config._attn_implementation_internal = "flash_attention_2"
    try:
        with pytest.raises(ValueError, match="attn_implementation must be one of .*flash_attention_2.*2-D padding"):
            hf.apply_future_mask(t.model, "f")
    finally:
        config._attn_implementation_internal = "sdpa"
    with pytest.raises(ValueError, match="layer types"):
        hf.apply_future_mask(qwen2_vl_factory("sdpa", use_sliding_window=True, sliding_window=4,
                                              max_window_layers=1), "f")
    inputs = t.inputs(TWO_IMAGES)
    with hf.apply_future_mask(t.model, "f"):
        with pytest.raises(ValueError, match="already patched"):
            hf.apply_future_mask(t.model, "v2v")
        embeds = t.model.get_input_embeddings()(inputs["input_ids"])
        with pytest.raises(ValueError, match="input_ids is needed"):
            t.model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"])
        # chunked prefill: text first, then the image after a cache
        text = t.inputs("TT")
        out = t.model(**text, use_cache=True)
        rest = {k: v for k, v in inputs.items() if k != "attention_mask"}
        with pytest.raises(ValueError, match="image tokens after 2 cached positions"):
            t.model(**rest, **{CACHE: cache_of(out)}, use_cache=True)
        L = inputs["input_ids"].shape[1]
        custom = torch.ones(1, 1, L, L, dtype=torch.bool).tril()
        with pytest.raises(ValueError, match="attention_mask of the prefill must be the 2-D padding mask"):
            t.model(**dict(inputs, attention_mask=custom))
