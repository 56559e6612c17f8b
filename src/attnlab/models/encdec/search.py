"""Greedy decoding and beam search for :class:`~attnlab.models.encdec.EncoderDecoder`, batched over sentences.

Shape legend: B sentences, K beams, N = rows in flight (``B`` for greedy, ``active sentences x K`` for beam search),
S source length, t tokens generated so far, V vocabulary.

Conventions
    * ``src`` ``(B, S)`` holds right-padded source ids (``model.config.pad_id``), e.g. ``x [eos]`` as
      :mod:`attnlab.data.mt_batching` makes them. The decoder starts from ``bos_id``; a hypothesis ends at
      ``eos_id``. Results are token id lists **without** ``bos`` and ``eos``, one per sentence.
    * **Length.** Greedy decoding generates at most ``max_len`` tokens (``<= max_target_len``). Beam search allows
      sentence ``b`` at most ``L_b = min(floor(max_len_a * src_len_b + max_len_b), max_target_len)`` tokens, where
      ``src_len_b`` counts its non-padding source ids. In both, ``eos`` counts as one of them; a hypothesis that
      reaches the limit without ``eos`` ends there. The decoder never reads more than ``max_target_len`` inputs.
    * **Length penalty** (GNMT, Wu et al. 2016): a finished hypothesis of ``n`` tokens (its ``eos`` included) with
      summed log-probability ``log P`` scores ``log P / ((5 + n) / 6) ** alpha``, ``alpha = length_penalty``
      (``0``: plain log-probability). The best-scoring finished hypothesis is returned.
    * **Beam search.** Every step ranks the ``2 K`` best continuations of the ``K`` live beams by summed
      log-probability; an ``eos`` continuation among the first ``K`` finishes a hypothesis, the first ``K``
      others become the next beams. A sentence is done when it has ``K`` finished hypotheses or reaches ``L_b``;
      done sentences leave the batch (their rows are dropped from the caches). With ``beam_size=1`` this is
      exactly greedy decoding.
    * **Caches.** ``use_cache=True`` projects the source into cross-attention keys and values once and feeds one
      token per step through each layer's cache; ``use_cache=False`` re-runs the decoder over the whole prefix at
      every step. Both give the same tokens (and, up to rounding, the same logits).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from attnlab.models.encdec.cache import EncDecCache
from attnlab.models.encdec.model import EncoderDecoder

__all__ = ["greedy_decode", "greedy_decode_with_logits", "beam_search", "beam_search_with_scores",
           "length_penalty_factor"]


def length_penalty_factor(n: int, alpha: float) -> float:
    """GNMT's ``lp(n) = ((5 + n) / 6) ** alpha``; a hypothesis scores ``log P / lp(n)``."""
    return ((5.0 + n) / 6.0) ** alpha


def _check_model_and_src(model: object, src: object) -> tuple[EncoderDecoder, Tensor]:
    if not isinstance(model, EncoderDecoder):
        raise ValueError(f"model must be an EncoderDecoder, got {type(model).__name__}")
    if not isinstance(src, Tensor) or src.ndim != 2:
        got = tuple(src.shape) if isinstance(src, Tensor) else type(src).__name__
        raise ValueError(f"src must be a torch.long tensor of shape (B, S) (right-padded with pad_id), got {got}")
    return model, src  # the model checks dtype, values, length and padding


def _check_token(name: str, value: object, vocab_size: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be a token id in [0, vocab_size={vocab_size}), got {value!r}")
    return value


def _check_search_args(model: object, src: object, bos_id: object, eos_id: object,
                       use_cache: object) -> tuple[EncoderDecoder, Tensor]:
    """The checks every search makes: the model and the source ids, the special tokens, the cache choice."""
    model, src = _check_model_and_src(model, src)
    V = model.config.vocab_size
    assert V is not None
    _check_token("bos_id", bos_id, V)
    _check_token("eos_id", eos_id, V)
    _check_use_cache(model, use_cache)
    return model, src


def _check_use_cache(model: EncoderDecoder, use_cache: object) -> None:
    if not isinstance(use_cache, bool):
        raise ValueError(f"use_cache must be a bool, got {use_cache!r}")


class _Decoder:
    """One step of the decoder for N rows, cached or recomputed; rows can be selected (beam search)."""

    def __init__(self, model: EncoderDecoder, memory: Tensor, pad: Tensor | None, bos_id: int, use_cache: bool) -> None:
        self.model = model
        self.use_cache = use_cache
        N = memory.shape[0]
        self.inputs = torch.full((N, 1), bos_id, dtype=torch.long, device=memory.device)  # (N, 1 + t): [bos] y
        self.memory, self.pad = memory, pad
        self.caches: EncDecCache | None = model.new_caches(memory, pad) if use_cache else None

    def step(self) -> Tensor:
        """Next-token logits ``(N, V)`` after the inputs so far."""
        if self.caches is not None:
            new = self.inputs if self.caches.seq_len == 0 else self.inputs[:, -1:]  # (N, 1)
            return self.model.decode(new, None, None, caches=self.caches)[:, -1]  # (N, V)
        return self.model.decode(self.inputs, self.memory, self.pad)[:, -1]  # (N, V)

    def append(self, tokens: Tensor) -> None:
        self.inputs = torch.cat([self.inputs, tokens.view(-1, 1)], dim=1)  # (N, 1 + t + 1)

    def select_rows(self, index: Tensor) -> None:
        self.inputs = self.inputs.index_select(0, index)
        if self.caches is not None:
            self.caches.select_rows_(index)
        else:
            self.memory = self.memory.index_select(0, index)
            self.pad = None if self.pad is None else self.pad.index_select(0, index)


def _encode(model: EncoderDecoder, src: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
    """``memory`` ``(B, S, C)``, the padding mask (``None`` without padding) and each sentence's source length."""
    pad = model.padding_mask(src)  # (B, S)
    memory = model.encode(src, pad)
    src_len = (~pad).sum(dim=1)  # (B,)
    return memory, (pad if bool(pad.any()) else None), src_len


class _EvalMode:
    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was_training)


@torch.no_grad()
def greedy_decode_with_logits(model: EncoderDecoder, src: Tensor, *, max_len: int, bos_id: int, eos_id: int,
                              use_cache: bool = True) -> tuple[list[list[int]], list[Tensor]]:
    """Like :func:`greedy_decode`, and also the logits ``(B, V)`` the decoder gave at each step (every row, finished
    or not: a finished row keeps reading ``eos`` so that the steps stay comparable)."""
    model, src = _check_search_args(model, src, bos_id, eos_id, use_cache)
    T_max = model.config.max_target_len
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= T_max:
        raise ValueError(f"max_len must be an int in [1, max_target_len={T_max}], got {max_len!r}")
    with _EvalMode(model):
        memory, pad, _ = _encode(model, src)
        B = src.shape[0]
        dec = _Decoder(model, memory, pad, bos_id, use_cache)
        done = torch.zeros(B, dtype=torch.bool, device=src.device)  # (B,)
        out: list[Tensor] = []
        step_logits: list[Tensor] = []
        for t in range(max_len):
            logits = dec.step()  # (B, V)
            step_logits.append(logits)
            nxt = logits.argmax(dim=-1)  # (B,)
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            out.append(nxt)
            done = done | (nxt == eos_id)
            if bool(done.all()) or t + 1 == max_len:
                break
            dec.append(nxt)
    ids = torch.stack(out, dim=1).tolist()  # (B, t)
    return [row[: row.index(eos_id)] if eos_id in row else row for row in ids], step_logits


def greedy_decode(model: EncoderDecoder, src: Tensor, *, max_len: int, bos_id: int, eos_id: int,
                  use_cache: bool = True) -> list[list[int]]:
    """Greedy (argmax) translations of the sentences in ``src`` ``(B, S)``, token ids without ``bos``/``eos``.

    Args:
        model: the encoder-decoder (run in eval mode and without gradients; its mode is restored).
        src: right-padded source ids (``model.config.pad_id``), ``torch.long``.
        max_len: the most tokens generated per sentence, ``eos`` included, ``1 <= max_len <= max_target_len``.
        bos_id, eos_id: the decoder's start token and the end token.
        use_cache: decode with caches (one token per step) instead of recomputing the decoder at every step.
    """
    return greedy_decode_with_logits(model, src, max_len=max_len, bos_id=bos_id, eos_id=eos_id,
                                     use_cache=use_cache)[0]


def beam_search(model: EncoderDecoder, src: Tensor, *, beam_size: int = 4, length_penalty: float = 0.6,
                max_len_a: float = 1.2, max_len_b: int = 10, bos_id: int, eos_id: int,
                use_cache: bool = True) -> list[list[int]]:
    """Beam-search translations of the sentences in ``src`` ``(B, S)``, token ids without ``bos``/``eos``.

    Args:
        model: the encoder-decoder (run in eval mode and without gradients; its mode is restored).
        src: right-padded source ids (``model.config.pad_id``), ``torch.long``.
        beam_size: ``K``, hypotheses kept per sentence (``1``: greedy decoding).
        length_penalty: GNMT's ``alpha`` (see the module docstring), ``>= 0``.
        max_len_a, max_len_b: sentence ``b`` gets at most ``min(floor(max_len_a * src_len_b + max_len_b),
            max_target_len)`` tokens, ``eos`` included; ``max_len_a >= 0``, ``max_len_b >= 1``.
        bos_id, eos_id: the decoder's start token and the end token.
        use_cache: decode with caches (one token per step) instead of recomputing the decoder at every step.
    """
    return [hyp for hyp, _ in beam_search_with_scores(
        model, src, beam_size=beam_size, length_penalty=length_penalty, max_len_a=max_len_a, max_len_b=max_len_b,
        bos_id=bos_id, eos_id=eos_id, use_cache=use_cache)]


@torch.no_grad()
def beam_search_with_scores(model: EncoderDecoder, src: Tensor, *, beam_size: int = 4, length_penalty: float = 0.6,
                            max_len_a: float = 1.2, max_len_b: int = 10, bos_id: int, eos_id: int,
                            use_cache: bool = True) -> list[tuple[list[int], float]]:
    """Like :func:`beam_search`, with each returned hypothesis's score ``log P / lp(n)`` (``n`` counting its
    ``eos``, when it ended with one)."""
    model, src = _check_search_args(model, src, bos_id, eos_id, use_cache)
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be an int >= 1, got {beam_size!r}")
    for name, val in (("length_penalty", length_penalty), ("max_len_a", max_len_a)):
        if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val) or val < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {val!r}")
    if isinstance(max_len_b, bool) or not isinstance(max_len_b, int) or max_len_b < 1:
        raise ValueError(f"max_len_b must be an int >= 1, got {max_len_b!r}")
    K = beam_size
    V = model.config.vocab_size
    T_max = model.config.max_target_len
    with _EvalMode(model):
        memory, pad, src_len = _encode(model, src)
        B = src.shape[0]
        max_lens = [min(int(math.floor(max_len_a * n + max_len_b)), T_max) for n in src_len.tolist()]
        rows = torch.arange(B, device=src.device).repeat_interleave(K)  # (B K,): every sentence's source K times
        dec = _Decoder(model, memory.index_select(0, rows), None if pad is None else pad.index_select(0, rows),
                       bos_id, use_cache)
        active = list(range(B))  # sentences in flight, in row-block order
        tokens: list[list[list[int]]] = [[[] for _ in range(K)] for _ in range(B)]  # per sentence, per beam
        scores = torch.full((B, K), float("-inf"), dtype=torch.float64, device=src.device)  # (A, K)
        scores[:, 0] = 0.0  # the first step expands one beam only
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        t = 0
        while active:
            logp = torch.log_softmax(dec.step().double(), dim=-1)  # (A K, V)
            A = len(active)
            cand = (scores.view(A, K, 1) + logp.view(A, K, V)).view(A, K * V)  # (A, K V)
            top_scores, top_idx = cand.topk(min(2 * K, K * V), dim=1)  # (A, 2K), best first
            top_beam, top_tok = top_idx // V, top_idx % V
            top_scores_l, top_beam_l, top_tok_l = top_scores.tolist(), top_beam.tolist(), top_tok.tolist()
            keep_rows: list[int] = []  # rows (of the current layout) to continue from
            keep_tok: list[int] = []
            keep_scores: list[float] = []
            still: list[int] = []
            new_tokens: list[list[list[int]]] = []
            n = t + 1  # tokens per hypothesis after this step
            for a, s in enumerate(active):
                fin, beams = finished[s], []
                last = n >= max_lens[s]
                for rank, (sc, bm, tok) in enumerate(zip(top_scores_l[a], top_beam_l[a], top_tok_l[a])):
                    if tok == eos_id or last:
                        if rank < K:  # an eos (or, at the length limit, any) continuation among the best K
                            hyp = tokens[s][bm] + ([] if tok == eos_id else [tok])
                            fin.append((sc / length_penalty_factor(n, length_penalty), hyp))
                        continue
                    if len(beams) < K:
                        beams.append((sc, bm, tok))
                if len(fin) >= K or last:
                    continue
                still.append(s)
                new_tokens.append([tokens[s][bm] + [tok] for _, bm, tok in beams])
                for sc, bm, tok in beams:
                    keep_rows.append(a * K + bm)
                    keep_tok.append(tok)
                    keep_scores.append(sc)
            for s, beams_tokens in zip(still, new_tokens):
                tokens[s] = beams_tokens
            active = still
            t += 1
            if not active:
                break
            index = torch.tensor(keep_rows, dtype=torch.long, device=src.device)  # (A' K,)
            dec.select_rows(index)
            dec.append(torch.tensor(keep_tok, dtype=torch.long, device=src.device))
            scores = torch.tensor(keep_scores, dtype=torch.float64, device=src.device).view(len(active), K)
    best = [max(fin, key=lambda h: h[0]) for fin in finished]
    return [(hyp, score) for score, hyp in best]
