"""Cached decoding and search: cached == recomputed (tokens and logits) for every decoder cache kind, the source's
cross-attention keys/values projected once, beam size 1 == greedy, beam search == a plain one-sentence reference,
length limits and the length penalty, bad arguments refused.

float64. TOL = 1e-10 for cached against recomputed logits (the same math in another order, and linear attention's
recurrent against its chunked form; observed ~1e-14).
"""

from __future__ import annotations

import math

import pytest
import torch
from encdec_helpers import BOS, EOS, F64, PAD, V, model, padded, random_sources

from attnlab.cache import KVCache, RecurrentStateCache, SlidingKVCache, UQKVCache
from attnlab.layers.mha import MultiHeadAttention
from attnlab.models.encdec import (
    EncDecCache,
    beam_search,
    beam_search_with_scores,
    greedy_decode,
    greedy_decode_with_logits,
    length_penalty_factor,
)
from attnlab.models.encdec.cache import select_cache_rows_

TOL = 1e-10
DECODERS = ["standard", "sliding-window", "castle", "linear", "gqa", "strided"]
CACHE_KIND = {"standard": KVCache, "sliding-window": SlidingKVCache, "castle": UQKVCache, "linear": RecurrentStateCache,
              "gqa": KVCache, "strided": KVCache}


def _src(lengths=(5, 9, 3, 12, 7, 1, 4), seed: int = 3) -> torch.Tensor:
    return padded(random_sources(list(lengths), seed=seed))


def _eos_prone(m, boost: float = 2.0):
    """Make eos likelier (tied head: its logit is h . E[eos]) so that sentences end at different steps."""
    with torch.no_grad():
        m.tok_emb.weight[EOS] *= boost
    return m


@pytest.mark.parametrize("dec", DECODERS)
def test_prefill_and_steps_equal_full_decoder(dec: str) -> None:
    m = model(decoder_attention=dec)
    src = _src((6, 2, 4))
    pad = src == PAD
    tgt = torch.randint(3, V, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        memory = m.encode(src, pad)
        full = m.decode(tgt, memory, pad)  # (3, 11, V)
        for prefill in (1, 4, 11):
            caches = m.new_caches(memory, pad)
            assert all(isinstance(c, CACHE_KIND[dec]) for c in caches.self_caches)
            parts = [m.decode(tgt[:, :prefill], memory, None, caches=caches)]
            parts += [m.decode(tgt[:, t:t + 1], None, pad, caches=caches) for t in range(prefill, 11)]
            assert caches.seq_len == 11
            assert (torch.cat(parts, dim=1) - full).abs().max() < TOL, (dec, prefill)


@pytest.mark.parametrize("dec", DECODERS)
def test_cached_greedy_equals_recomputed_token_for_token_and_logit_for_logit(dec: str) -> None:
    m = _eos_prone(model(decoder_attention=dec))
    src = _src()
    a, la = greedy_decode_with_logits(m, src, max_len=14, bos_id=BOS, eos_id=EOS, use_cache=True)
    b, lb = greedy_decode_with_logits(m, src, max_len=14, bos_id=BOS, eos_id=EOS, use_cache=False)
    assert a == b
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert (x - y).abs().max() < TOL
    lengths = {len(h) for h in a}
    assert len(lengths) > 1  # sentences end at different steps: the test covers finished rows


@pytest.mark.parametrize("dec", DECODERS)
def test_cached_beam_search_equals_recomputed(dec: str) -> None:
    m = _eos_prone(model(decoder_attention=dec))
    src = _src()
    a = beam_search(m, src, beam_size=3, length_penalty=0.6, bos_id=BOS, eos_id=EOS, use_cache=True)
    b = beam_search(m, src, beam_size=3, length_penalty=0.6, bos_id=BOS, eos_id=EOS, use_cache=False)
    assert a == b


def test_cross_attention_keys_values_are_projected_once_per_source(monkeypatch: pytest.MonkeyPatch) -> None:
    m = model(n_decoder_layers=3)
    m.tok_emb.weight.data[EOS] = 0  # eos logit 0: never the argmax, so every sentence runs all steps
    calls: list[int] = []
    orig = MultiHeadAttention.project_context

    def counting(self, context):
        calls.append(context.shape[0])
        return orig(self, context)

    monkeypatch.setattr(MultiHeadAttention, "project_context", counting)
    src = _src((5, 8))
    out = greedy_decode(m, src, max_len=12, bos_id=BOS, eos_id=EOS)
    assert [len(h) for h in out] == [12, 12]
    assert calls == [2, 2, 2]  # once per cross-attention layer, for the whole batch, not once per step
    calls.clear()
    beam_search(m, src, beam_size=3, max_len_a=0, max_len_b=12, bos_id=BOS, eos_id=EOS)
    assert calls == [6, 6, 6]  # sources x beams, once; reordering beams moves keys/values, never re-projects
    calls.clear()
    greedy_decode(m, src, max_len=12, bos_id=BOS, eos_id=EOS, use_cache=False)
    assert len(calls) == 3 * 12  # the recomputing path projects at every step (what the cache saves)


@pytest.mark.parametrize("dec", ["standard", "castle", "linear"])
def test_beam_size_one_is_greedy(dec: str) -> None:
    m = _eos_prone(model(decoder_attention=dec))
    src = _src()
    for use_cache in (True, False):
        greedy = greedy_decode(m, src, max_len=11, bos_id=BOS, eos_id=EOS, use_cache=use_cache)
        for alpha in (0.0, 1.0):
            beam = beam_search(m, src, beam_size=1, length_penalty=alpha, max_len_a=0, max_len_b=11, bos_id=BOS,
                               eos_id=EOS, use_cache=use_cache)
            assert beam == greedy


def _reference_beam(m, src_row: list[int], K: int, alpha: float, max_len: int) -> list[int]:
    """The specification, one sentence, no cache, no batching: rank 2K continuations, eos among the best K
    finishes, the best K others continue; stop at K finished or at max_len tokens; best by log P / lp(n)."""
    src = torch.tensor([src_row])
    beams = [(0.0, [])]
    finished = []
    for n in range(1, max_len + 1):
        cands = []
        for sc, toks in beams:
            with torch.no_grad():
                logp = torch.log_softmax(m(src, torch.tensor([[BOS] + toks]))[0, -1].double(), -1)
            cands += [(sc + logp[v].item(), toks, v) for v in range(V)]
        cands.sort(key=lambda c: -c[0])
        cands = cands[:2 * K]
        nxt = []
        for rank, (sc, toks, v) in enumerate(cands):
            if v == EOS or n == max_len:
                if rank < K:
                    finished.append((sc / ((5 + n) / 6) ** alpha, toks + ([] if v == EOS else [v])))
            elif len(nxt) < K:
                nxt.append((sc, toks + [v]))
        if len(finished) >= K or n == max_len:
            break
        beams = nxt
    return max(finished, key=lambda h: h[0])[1]


@pytest.mark.parametrize("K, alpha", [(2, 0.0), (3, 0.6), (4, 1.5)])
def test_batched_beam_search_equals_one_sentence_reference(K: int, alpha: float) -> None:
    m = _eos_prone(model(decoder_attention="standard"), boost=1.4)
    src_lists = random_sources([5, 9, 3, 1, 7], seed=11)
    a, b = 0.5, 3
    got = beam_search(m, padded(src_lists), beam_size=K, length_penalty=alpha, max_len_a=a, max_len_b=b,
                      bos_id=BOS, eos_id=EOS)
    for s, hyp in zip(src_lists, got):
        L = min(math.floor(a * len(s) + b), m.config.max_target_len)
        assert hyp == _reference_beam(m, s, K, alpha, L)


def test_beam_search_finds_likelier_hypotheses_than_greedy() -> None:
    """With no length penalty the best finished beam is at least as likely as greedy's on average (here: strictly
    better in some sentence), so the search really explores."""
    m = _eos_prone(model(), boost=1.3)
    src = _src(seed=5)
    greedy = greedy_decode(m, src, max_len=14, bos_id=BOS, eos_id=EOS)
    beam = beam_search(m, src, beam_size=5, length_penalty=0.0, max_len_a=0, max_len_b=14, bos_id=BOS, eos_id=EOS)

    def logp(b: int, hyp: list[int]) -> float:
        ids = hyp + ([EOS] if len(hyp) < 14 else [])  # scored tokens: eos counts unless the limit was reached
        tgt = torch.tensor([[BOS] + ids[:-1]])
        with torch.no_grad():
            lp = torch.log_softmax(m(src[b:b + 1], tgt)[0].double(), -1)  # (len(ids), V)
        return sum(lp[i, t].item() for i, t in enumerate(ids))

    diffs = [logp(b, beam[b]) - logp(b, greedy[b]) for b in range(src.shape[0])]
    assert sum(diffs) > 0 and max(diffs) > 1e-6


def test_max_length_rules() -> None:
    m = model()
    m.tok_emb.weight.data[EOS] = 0  # never eos: every hypothesis runs to its limit
    lengths = [5, 9, 2, 12]
    src = _src(tuple(lengths))
    out = beam_search(m, src, beam_size=2, max_len_a=0.5, max_len_b=2, bos_id=BOS, eos_id=EOS)
    assert [len(h) for h in out] == [min(math.floor(0.5 * n + 2), 14) for n in lengths] == [4, 6, 3, 8]
    capped = beam_search(m, src, beam_size=2, max_len_a=3.0, max_len_b=1, bos_id=BOS, eos_id=EOS)
    assert [len(h) for h in capped] == [14, 14, 7, 14]  # capped by max_target_len=14
    assert [len(h) for h in greedy_decode(m, src, max_len=14, bos_id=BOS, eos_id=EOS)] == [14] * 4


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_returned_score_is_log_probability_over_gnmt_penalty(alpha: float) -> None:
    """score = log P(hyp [eos]) / ((5 + n) / 6) ** alpha, n = tokens including eos (none at the length limit)."""
    m = _eos_prone(model(), boost=1.4)
    src = _src(seed=13)
    out = beam_search_with_scores(m, src, beam_size=3, length_penalty=alpha, max_len_a=0, max_len_b=9, bos_id=BOS,
                                  eos_id=EOS)
    assert {len(h) for h, _ in out} >= {9} and min(len(h) for h, _ in out) < 9  # both endings occur
    for b, (hyp, score) in enumerate(out):
        ids = hyp + ([EOS] if len(hyp) < 9 else [])
        with torch.no_grad():
            lp = torch.log_softmax(m(src[b:b + 1], torch.tensor([[BOS] + ids[:-1]]))[0].double(), -1)
        logp = sum(lp[i, t].item() for i, t in enumerate(ids))
        assert score == pytest.approx(logp / ((5 + len(ids)) / 6) ** alpha, rel=1e-12, abs=1e-12)


def test_length_penalty_formula_and_effect() -> None:
    assert length_penalty_factor(1, 1.0) == 1.0
    assert length_penalty_factor(7, 0.5) == pytest.approx(math.sqrt(2.0))
    assert length_penalty_factor(13, 0.0) == 1.0
    m = _eos_prone(model(), boost=1.4)
    src = _src(seed=12)
    short = beam_search(m, src, beam_size=4, length_penalty=0.0, bos_id=BOS, eos_id=EOS)
    long = beam_search(m, src, beam_size=4, length_penalty=3.0, bos_id=BOS, eos_id=EOS)
    assert sum(map(len, long)) > sum(map(len, short))  # a larger alpha favours longer hypotheses


def test_search_restores_training_mode_and_needs_no_grad() -> None:
    m = model()
    m.train()
    out = greedy_decode(m, _src((4,)), max_len=3, bos_id=BOS, eos_id=EOS)
    assert m.training and len(out) == 1


@pytest.mark.parametrize("dec", ["standard", "sliding-window", "castle", "linear"])
def test_select_rows_of_every_cache_kind(dec: str) -> None:
    """Selecting rows of the caches after a prefill equals prefilling the selected rows (the beam-search reorder)."""
    m = model(decoder_attention=dec)
    src = _src((6, 3, 5))
    pad = src == PAD
    tgt = torch.randint(3, V, (3, 6), generator=torch.Generator().manual_seed(2))
    index = torch.tensor([2, 0, 2, 1])
    with torch.no_grad():
        memory = m.encode(src, pad)
        caches = m.new_caches(memory, pad)
        m.decode(tgt[:, :5], None, None, caches=caches)
        caches.select_rows_(index)
        assert caches.batch_size == 4 and all(c.batch_size == 4 for c in caches.self_caches)
        got = m.decode(tgt[index, 5:], None, None, caches=caches)
        want = m.decode(tgt[index], memory[index], pad[index])[:, 5:]
    assert (got - want).abs().max() < TOL


def test_select_rows_errors() -> None:
    m = model()
    src = _src((3, 2))
    caches = m.new_caches(m.encode(src), src == PAD)
    assert isinstance(caches, EncDecCache) and caches.memory_bytes() > 0
    with pytest.raises(ValueError, match=r"index must be a non-empty 1-d torch.long tensor of row numbers, got "
                                         r"torch.int32 \(2,\)"):
        caches.select_rows_(torch.tensor([0, 1], dtype=torch.int32))

    class NoBatch:
        pass

    with pytest.raises(ValueError, match="cannot select rows of NoBatch: it has no int batch_size attribute"):
        select_cache_rows_(NoBatch(), torch.tensor([0]))  # type: ignore[arg-type]


@pytest.mark.parametrize("call, match", [
    (lambda m, s: greedy_decode(m, s, max_len=15, bos_id=BOS, eos_id=EOS),
     r"max_len must be an int in \[1, max_target_len=14\], got 15"),
    (lambda m, s: greedy_decode(m, s, max_len=0, bos_id=BOS, eos_id=EOS), r"max_len must be an int in"),
    (lambda m, s: greedy_decode(m, s, max_len=3, bos_id=V, eos_id=EOS),
     r"bos_id must be a token id in \[0, vocab_size=37\), got 37"),
    (lambda m, s: greedy_decode(m, s, max_len=3, bos_id=BOS, eos_id=-1), r"eos_id must be a token id"),
    (lambda m, s: greedy_decode(m, s, max_len=3, bos_id=BOS, eos_id=EOS, use_cache=1), r"use_cache must be a bool"),
    (lambda m, s: greedy_decode(m, s[0], max_len=3, bos_id=BOS, eos_id=EOS), r"src must be a torch.long tensor of "
                                                                            r"shape \(B, S\)"),
    (lambda m, s: greedy_decode(m, s.double(), max_len=3, bos_id=BOS, eos_id=EOS), r"src must have dtype torch.long"),
    (lambda m, s: greedy_decode(torch.nn.Linear(2, 2), s, max_len=3, bos_id=BOS, eos_id=EOS),
     r"model must be an EncoderDecoder, got Linear"),
    (lambda m, s: beam_search(m, s, beam_size=0, bos_id=BOS, eos_id=EOS), r"beam_size must be an int >= 1, got 0"),
    (lambda m, s: beam_search(m, s, length_penalty=-0.1, bos_id=BOS, eos_id=EOS),
     r"length_penalty must be a finite number >= 0, got -0.1"),
    (lambda m, s: beam_search(m, s, max_len_a=float("nan"), bos_id=BOS, eos_id=EOS), r"max_len_a must be a finite"),
    (lambda m, s: beam_search(m, s, max_len_b=0, bos_id=BOS, eos_id=EOS), r"max_len_b must be an int >= 1, got 0"),
    (lambda m, s: beam_search(m, torch.full((1, 17), 5), bos_id=BOS, eos_id=EOS),
     r"src has length 17, more than max_source_len=16"),
])
def test_bad_search_arguments(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call(model(), _src((4, 2)))


def test_float32_model_decodes() -> None:
    m = model().float()
    out = beam_search(m, _src((4, 2)), beam_size=2, bos_id=BOS, eos_id=EOS)
    assert len(out) == 2 and all(isinstance(t, int) for h in out for t in h)
    assert m.tok_emb.weight.dtype == torch.float32 != F64
