"""``attn_implementation="attnlab-documents"``: packed sequences in a stock transformers Llama, the documents read from
each call's ``position_ids`` (restarting at 0 at each document start). Logits, gradients and cached greedy generation
equal attnlab's own LM layers under ``document(ids) & causal()`` on the same weights and the same documents.

The other ``attnlab-*`` masks under transformers' own packed-sequence detection (``position_ids`` restarting at 0, no
cache, no ``attention_mask``): a causal one keeps the documents (``mask & document(ids) & causal()``), a non-causal
one refuses the call, and a call without packed sequences builds the mask exactly as before."""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed (attnlab[hf], dev extra)")

from transformers.masking_utils import causal_mask_function, create_causal_mask, sdpa_mask  # noqa: E402

from attnlab.integrations.hf_export import lm_to_llama  # noqa: E402
from attnlab.integrations.hf_masks import DOCUMENTS, _documents_attention, documents_mask, registered  # noqa: E402
from attnlab.masks import Mask, causal, dense, document  # noqa: E402
from attnlab.models.lm import LMConfig  # noqa: E402

V = 37
#: two packed batches of 2 rows, each row with its own document lengths (the same length in a batch: no padding)
LAYOUTS = {"3+5+9|9+8": [[3, 5, 9], [9, 8]], "1+6+4+6|12+1+4": [[1, 6, 4, 6], [12, 1, 4]]}


def packed(lengths: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Document ids and position ids ``(B, T)`` of rows packing documents of ``lengths`` tokens."""
    doc = torch.tensor([[d for d, n in enumerate(row) for _ in range(n)] for row in lengths])  # (B, T)
    pos = torch.tensor([[i for n in row for i in range(n)] for row in lengths])  # (B, T)
    assert doc.shape == pos.shape, lengths
    return doc, pos


def continued(t: torch.Tensor, n: int, step: int) -> torch.Tensor:
    """``t`` ``(B, T)`` with ``n`` more columns continuing its last column by ``step`` per column."""
    return torch.cat([t, t[:, -1:] + step * torch.arange(1, n + 1)], dim=1)


def attnlab_logits(lm: torch.nn.Module, idx: torch.Tensor, mask: Mask) -> torch.Tensor:
    """attnlab's LM with every layer's self-attention under ``mask`` (the layers' per-call mask)."""
    x = lm.tok_emb(idx)  # (B, T, C)
    for block in lm.blocks:
        x = block(x, None, attn_kwargs={"mask": mask})  # (B, T, C)
    return lm.lm_head(lm.norm_f(x))  # (B, T, V)


def tiny_lm(n_layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return LMConfig(vocab_size=V, n_layers=n_layers, d_model=32, n_heads=4, attention="gqa",
                    context_len=64).build().eval()


def tokens(shape: tuple[int, int], seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def test_the_reference_is_attnlabs_own_lm() -> None:
    """The per-call-mask reference above is attnlab's LM itself under the causal mask."""
    lm = tiny_lm()
    idx = tokens((2, 17))
    torch.testing.assert_close(attnlab_logits(lm, idx, causal()), lm(idx), atol=1e-6, rtol=0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_documents_mask_is_attnlabs_document_mask(layout: str) -> None:
    """``documents_mask`` of restarting positions equals ``document(ids) & causal()``: for the whole sequence, and
    row by row for a call that starts after ``q_offset`` cached tokens (decoding), whose documents are not given."""
    doc, pos = packed(LAYOUTS[layout])
    B, T = doc.shape
    want = dense(document(doc) & causal(), T, T, batch_size=B)  # (B, 1, T, T)
    assert torch.equal(dense(documents_mask(pos), T, T, batch_size=B), want)
    for q_offset, n in ((T - 1, 1), (5, 3), (0, 1)):
        got = dense(documents_mask(pos[:, q_offset:q_offset + n], q_offset), n, T, batch_size=B, q_offset=q_offset)
        assert torch.equal(got[..., :q_offset + n], want[:, :, q_offset:q_offset + n, :q_offset + n])
        assert not got[..., q_offset + n:].any()  # causal: nothing after the query
    # one row of position ids is shared by the batch
    assert torch.equal(dense(documents_mask(pos[1]), T, T, batch_size=B)[0], want[1])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_stock_llama_with_attnlab_documents_equals_attnlab(layout: str) -> None:
    """A training step (one model, a different packing per call): logits and gradients of the Llama with
    ``attnlab-documents`` equal attnlab's layers under ``document(ids) & causal()``."""
    doc, pos = packed(LAYOUTS[layout])
    lm = tiny_lm()
    hf = lm_to_llama(lm, attn_implementation=DOCUMENTS).train()
    idx = tokens(doc.shape)
    with torch.enable_grad():
        a = attnlab_logits(lm, idx, document(doc) & causal())
        # attention_mask given: transformers' own packed-sequence detection is off, the documents come from us alone
        b = hf(input_ids=idx, position_ids=pos, attention_mask=torch.ones_like(idx)).logits
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        loss_a = torch.nn.functional.cross_entropy(a[:, :-1].reshape(-1, V), idx[:, 1:].reshape(-1))
        loss_b = torch.nn.functional.cross_entropy(b[:, :-1].reshape(-1, V), idx[:, 1:].reshape(-1))
        loss_a.backward()
        loss_b.backward()
    for i in range(len(lm.blocks)):
        torch.testing.assert_close(hf.model.layers[i].self_attn.q_proj.weight.grad,
                                   lm.blocks[i].attn.in_proj.weight.grad[:32], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(hf.model.layers[i].self_attn.o_proj.weight.grad,
                                   lm.blocks[i].attn.out_proj.weight.grad, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(hf.model.embed_tokens.weight.grad, lm.tok_emb.weight.grad, atol=1e-6, rtol=1e-4)
    # the documents matter: the plain causal Llama (same restarting positions) and attnlab's causal LM differ
    sdpa = lm_to_llama(lm, attn_implementation="sdpa")
    assert not torch.allclose(sdpa(input_ids=idx, position_ids=pos, attention_mask=torch.ones_like(idx)).logits, a,
                              atol=1e-3)
    assert not torch.allclose(lm(idx), a, atol=1e-3)
    # and transformers' own packed-sequence route (no cache, no padding mask) agrees where it applies
    torch.testing.assert_close(sdpa(input_ids=idx, position_ids=pos, use_cache=False).logits, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cached_generate_continues_the_last_document(layout: str) -> None:
    """Greedy ``generate(position_ids=...)`` with the cache: every step's logits (and so its token) equal one uncached
    forward over the whole generated sequence, in transformers and in attnlab, where the new tokens continue each
    row's last document."""
    doc, pos = packed(LAYOUTS[layout])
    lm = tiny_lm()
    hf = lm_to_llama(lm, attn_implementation=DOCUMENTS)
    prompt = tokens(doc.shape, seed=2)
    T, n = prompt.shape[1], 7
    out = hf.generate(input_ids=prompt, position_ids=pos, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                      do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    seq = out.sequences  # (B, T + n)
    assert seq.shape == (2, T + n)
    steps = torch.stack(out.logits, dim=1)  # (B, n, V): the cached steps' logits
    full_doc, full_pos = continued(doc, n, 0), continued(pos, n, 1)
    hf_full = hf(input_ids=seq, position_ids=full_pos, use_cache=False).logits  # (B, T + n, V)
    ours = attnlab_logits(lm, seq, document(full_doc) & causal())  # (B, T + n, V)
    torch.testing.assert_close(hf_full, ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(steps, ours[:, T - 1:-1], atol=1e-5, rtol=0)
    assert torch.equal(ours[:, T - 1:-1].argmax(-1), seq[:, T:])
    # generating without the documents (one document per row) gives other logits
    plain = hf.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, do_sample=False,
                        pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    assert not torch.allclose(torch.stack(plain.logits, dim=1), steps, atol=1e-3)


def test_without_position_ids_it_is_one_document_per_row() -> None:
    """Default positions make one document: the plain causal Llama, also for a left-padded batch in ``generate()``."""
    lm = tiny_lm()
    hf, sdpa = lm_to_llama(lm, attn_implementation=DOCUMENTS), lm_to_llama(lm, attn_implementation="sdpa")
    idx = tokens((2, 11))
    torch.testing.assert_close(hf(input_ids=idx).logits, lm(idx), atol=1e-5, rtol=0)
    prompt = torch.tensor([[0, 0, 0, 5, 9, 2, 7], [3, 14, 15, 9, 2, 6, 11]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    kw = dict(input_ids=prompt, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert hf.generate(**kw).tolist() == sdpa.generate(**kw).tolist()


def test_documents_refusals() -> None:
    lm = tiny_lm(n_layers=1)
    hf = lm_to_llama(lm, attn_implementation=DOCUMENTS)
    idx = tokens((1, 6))
    with pytest.raises(ValueError, match="position_ids must be >= 0"):
        hf(input_ids=idx, position_ids=torch.tensor([[0, 1, -1, 0, 1, 2]]))
    # the attention function itself, as a model whose layers pass other position ids (or none) would call it
    attn, q = hf.model.layers[0].self_attn, torch.zeros(2, 4, 6, 8)  # (B, H, T, D)
    with pytest.raises(ValueError, match=r"shape \(B, T\) = \(2, 6\) or \(1, 6\) for this call, got \(1, 5\)"):
        _documents_attention(attn, q, q[:, :2], q[:, :2], None, position_ids=torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="reads the documents from position_ids"):
        _documents_attention(attn, q, q[:, :2], q[:, :2], None)
    static = transformers.StaticCache(config=hf.config, max_cache_len=16)
    with pytest.raises(ValueError, match="needs the keys of every token from the first"):
        hf(input_ids=idx, position_ids=torch.arange(6)[None], cache=static)
    with pytest.raises(ValueError, match="position_ids must be an integer tensor"):
        documents_mask(torch.zeros(2, 3))



# -------------------------------------------------------------- transformers' packed sequences, other attnlab masks
#: rows of 36 tokens whose documents are longer than the default stride and block (16): the masks matter inside them
LONG = [[22, 14], [5, 31]]


def built_mask(config: Any, pos: torch.Tensor | None, **kw: Any) -> Any:
    """The mask transformers' ``create_causal_mask`` builds for a model call without a cache (hidden size 8)."""
    B, T = (pos.shape if pos is not None else kw["attention_mask"].shape)
    attention_mask = kw.pop("attention_mask", None)
    return create_causal_mask(config, torch.zeros(B, T, 8), attention_mask, None, pos, **kw)


@pytest.mark.parametrize("impl", ["attnlab-strided", "attnlab-fixed"])
def test_a_causal_attnlab_mask_keeps_transformers_packed_sequences(impl: str) -> None:
    """transformers' own packed-sequence detection (``position_ids`` restarting at 0, no cache, no ``attention_mask``)
    puts the documents into the call's mask: a causal attnlab mask keeps them, on absolute positions (``fixed``'s
    blocks counted from the row's start), i.e. the Llama equals attnlab's LM under ``mask & document(ids) &
    causal()``, not under the unpacked mask."""
    doc, pos = packed(LONG)
    mask = registered()[impl]
    lm = tiny_lm()
    hf = lm_to_llama(lm, attn_implementation=impl, check=False)
    idx = tokens(doc.shape, seed=3)
    want = attnlab_logits(lm, idx, mask & document(doc) & causal())  # (B, T, V)
    got = hf(input_ids=idx, position_ids=pos, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the documents matter: the unpacked mask differs, with the default positions (attnlab's LM under the mask alone)
    # and with the same restarting positions given an attention_mask (transformers' detection off: one sequence a row)
    unpacked = hf(input_ids=idx, use_cache=False).logits
    torch.testing.assert_close(unpacked, attnlab_logits(lm, idx, mask), atol=1e-5, rtol=0)
    assert not torch.allclose(got, unpacked, atol=1e-3)
    ones = torch.ones_like(idx)
    assert not torch.allclose(got, hf(input_ids=idx, position_ids=pos, attention_mask=ones, use_cache=False).logits,
                              atol=1e-3)
    # the mask itself, also on transformers' vmap route (a model's own or_mask_function, here adding nothing)
    B, T = doc.shape
    for extra in ({}, {"or_mask_function": lambda b, h, q, kv: kv < 0}):
        assert torch.equal(built_mask(hf.config, pos, **extra),
                           dense(mask & document(doc) & causal(), T, T, batch_size=B))


def test_a_non_causal_attnlab_mask_refuses_transformers_packed_sequences() -> None:
    """prefix-LM is not causal: AND-ing transformers' (causal) packed-sequence mask would break it, and replacing it
    would attend across documents, so a packed call is refused; with an ``attention_mask`` (transformers' detection
    off) or with one sequence per row it runs as before."""
    doc, pos = packed(LONG)
    lm = tiny_lm()
    hf = lm_to_llama(lm, attn_implementation="attnlab-prefix-lm", check=False)
    idx = tokens(doc.shape, seed=3)
    with pytest.raises(ValueError, match="packed sequences"):
        hf(input_ids=idx, position_ids=pos, use_cache=False)
    with pytest.raises(ValueError, match="packed sequences"):  # transformers' vmap route
        built_mask(hf.config, pos, or_mask_function=lambda b, h, q, kv: kv < 0)
    B, T = doc.shape
    want = dense(registered()["attnlab-prefix-lm"], T, T, batch_size=B)  # (B, 1, T, T)
    assert torch.equal(built_mask(hf.config, pos, attention_mask=torch.ones(B, T, dtype=torch.long)), want)
    assert torch.equal(built_mask(hf.config, torch.arange(T).expand(B, T)), want)
    assert torch.equal(built_mask(hf.config, None, attention_mask=torch.ones(B, T, dtype=torch.long)), want)
    ones = torch.ones_like(idx)
    assert hf(input_ids=idx, position_ids=pos, attention_mask=ones, use_cache=False).logits.isfinite().all()
    assert hf(input_ids=idx, use_cache=False).logits.isfinite().all()


@pytest.mark.parametrize("impl", ["attnlab-sliding-window", "attnlab-strided", "attnlab-fixed", "attnlab-bigbird",
                                  "attnlab-prefix-lm"])
def test_an_unpacked_call_builds_the_mask_alone(impl: str) -> None:
    """Where transformers asks for plain causal (one sequence per row: a padding mask, a cache offset, default
    positions), the mask is exactly ``sdpa_mask`` of attnlab's predicate alone, as before packed sequences were
    handled."""
    mask = registered()[impl]
    interface = transformers.masking_utils.ALL_MASK_ATTENTION_FUNCTIONS[impl]
    pad = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1, 1], [1] * 10]).bool()
    calls = [dict(q_length=10, kv_length=10), dict(q_length=10, kv_length=10, attention_mask=pad),
             dict(q_length=3, kv_length=10, q_offset=7, attention_mask=pad), dict(q_length=1, kv_length=10, q_offset=9)]
    for call in calls:
        kw = dict(batch_size=2, allow_is_causal_skip=True, **call)
        want = sdpa_mask(**{**kw, "mask_function": mask.fn, "allow_is_causal_skip": False})
        assert torch.equal(interface(mask_function=causal_mask_function, **kw), want)
