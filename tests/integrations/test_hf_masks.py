"""attnlab masks inside a stock transformers Llama (``attn_implementation="attnlab-<name>"``): logits, gradients and
cached greedy generation equal attnlab's own LM with that mechanism and the same weights."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (attnlab[hf], dev extra)")

from attnlab.integrations.hf_export import lm_to_llama  # noqa: E402
from attnlab.integrations.hf_masks import DEFAULT_NAMES, register_hf_attention, registered  # noqa: E402
from attnlab.masks import bigbird, dense, fixed, prefix_lm, sliding_window, strided  # noqa: E402
from attnlab.models.lm import LMConfig, generate  # noqa: E402

CASES = {  # mechanism: (its layer options, the same mask)
    "sliding-window": ({"window": 5}, sliding_window(5)),
    "strided": ({"stride": 4}, strided(4)),
    "fixed": ({"block": 4, "summary": 1}, fixed(4, 1)),
    "bigbird": ({"window": 4, "n_global": 1, "n_random": 2}, bigbird(4, 1, 2)),
}


def test_defaults_are_registered() -> None:
    assert set(DEFAULT_NAMES) == {"attnlab-sliding-window", "attnlab-strided", "attnlab-fixed", "attnlab-bigbird",
                                  "attnlab-prefix-lm", "attnlab-documents"}  # documents: test_hf_documents.py
    assert registered()["attnlab-sliding-window"].window == 64


@pytest.mark.parametrize("mech", ["strided", "fixed", "bigbird"])
def test_a_default_name_runs_its_mechanism_with_the_default_options(mech: str) -> None:
    """``attn_implementation="attnlab-<mech>"`` as registered on import (no options given anywhere) equals attnlab's
    LM with ``attention=mech`` and its default options, at a length where the default mask is not causal."""
    torch.manual_seed(0)
    lm = LMConfig(vocab_size=37, n_layers=2, d_model=32, n_heads=4, context_len=48, attention=mech).build().eval()
    hf = lm_to_llama(lm, attn_implementation=f"attnlab-{mech}", check=False)
    idx = torch.randint(0, 37, (2, 41), generator=torch.Generator().manual_seed(1))
    a = lm(idx)
    torch.testing.assert_close(hf(input_ids=idx).logits, a, atol=1e-5, rtol=0)
    assert not torch.allclose(lm_to_llama(lm, check=False)(input_ids=idx).logits, a, atol=1e-3)
    prompt = idx[:1, :30]
    want = generate(lm, prompt, 8, temperature=0.0)
    got = hf.generate(input_ids=prompt, max_new_tokens=8, do_sample=False, pad_token_id=0,
                      attention_mask=torch.ones_like(prompt))
    assert got.tolist() == want.tolist()


@pytest.mark.parametrize("mech", list(CASES))
def test_stock_llama_with_an_attnlab_mask_equals_attnlab(mech: str) -> None:
    opts, mask = CASES[mech]
    name = register_hf_attention(f"test-{mech}", mask)
    torch.manual_seed(0)
    lm = LMConfig(vocab_size=37, n_layers=2, d_model=32, n_heads=4, context_len=48, attention=mech,
                  attention_options={mech: opts}).build().eval()
    hf = lm_to_llama(lm, attn_implementation=name, check=False)
    idx = torch.randint(0, 37, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.enable_grad():  # training: the loss gradients agree too
        a, b = lm(idx), hf(input_ids=idx).logits
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        a.square().mean().backward()
        b.square().mean().backward()
    torch.testing.assert_close(hf.model.layers[0].self_attn.q_proj.weight.grad,
                               lm.blocks[0].attn.in_proj.weight.grad[:32], atol=1e-6, rtol=1e-4)
    # and a plain causal Llama differs (the mask matters at this length)
    assert not torch.allclose(lm_to_llama(lm, check=False)(input_ids=idx).logits, a, atol=1e-3)
    prompt = torch.tensor([[3, 14, 15, 9, 2, 6, 11, 7]])
    want = generate(lm, prompt, 14, temperature=0.0)  # attnlab's own cache (sliding KV for the window)
    got = hf.generate(input_ids=prompt, max_new_tokens=14, do_sample=False, pad_token_id=0,
                      attention_mask=torch.ones_like(prompt))
    assert got.tolist() == want.tolist()


def test_a_bidirectional_prefix_mask_matches_its_dense_form() -> None:
    """prefix-LM is not causal (attnlab's LM refuses it), so the Llama with ``attnlab-prefix-lm`` is checked against
    the same Llama given attnlab's dense mask explicitly."""
    torch.manual_seed(0)
    lm = LMConfig(vocab_size=37, n_layers=2, d_model=32, n_heads=4, context_len=48).build().eval()
    name = register_hf_attention("test-prefix", prefix_lm(6))
    hf = lm_to_llama(lm, attn_implementation=name, check=False)
    ref = lm_to_llama(lm, attn_implementation="eager", check=False)
    idx = torch.randint(0, 37, (2, 15), generator=torch.Generator().manual_seed(1))
    bias = torch.zeros(15, 15).masked_fill(~dense(prefix_lm(6), 15, 15), float("-inf"))[None, None].expand(2, 1, 15, 15)
    torch.testing.assert_close(hf(input_ids=idx).logits, ref(input_ids=idx, attention_mask=bias).logits,
                               atol=1e-5, rtol=0)


def test_refusals() -> None:
    with pytest.raises(ValueError, match="one of transformers' own implementations"):
        register_hf_attention("sdpa", sliding_window(4))
    with pytest.raises(ValueError, match="differs per head"):
        register_hf_attention("x-bigbird", bigbird(4, 1, 2, n_heads=4))
    with pytest.raises(TypeError, match="mask must be a Mask or a mask_mod callable"):
        register_hf_attention("x", 3)  # type: ignore[arg-type]


def test_a_mask_with_a_length_limit_refuses_longer_calls() -> None:
    torch.manual_seed(0)
    lm = LMConfig(vocab_size=37, n_layers=1, d_model=32, n_heads=4, context_len=48).build().eval()
    name = register_hf_attention("test-bigbird-short", bigbird(4, 1, 2, max_len=16))
    hf = lm_to_llama(lm, attn_implementation=name, check=False)
    hf(input_ids=torch.zeros(1, 16, dtype=torch.long))  # within the limit
    with pytest.raises(ValueError, match="defined for positions < max_len=16, but this call reaches position 16"):
        hf(input_ids=torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("impl", ["attnlab-strided", "attnlab-documents"])
def test_a_model_with_its_own_sliding_window_is_refused(impl: str) -> None:
    """Mistral's sliding window would be dropped silently by an attnlab mask: the call is refused instead; without
    the window the same model runs."""
    import transformers

    cfg = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=1, vocab_size=11, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.MistralForCausalLM(transformers.MistralConfig(sliding_window=4, **cfg,
                                                                       attn_implementation=impl)).eval()
    ids = torch.randint(0, 11, (1, 12))
    with pytest.raises(ValueError, match="sliding window or chunk of 4 tokens"):
        model(ids, use_cache=False)
    plain = transformers.MistralForCausalLM(transformers.MistralConfig(sliding_window=None, **cfg,
                                                                       attn_implementation=impl)).eval()
    assert plain(ids, use_cache=False).logits.shape == (1, 12, 11)
