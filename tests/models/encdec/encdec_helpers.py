"""Shared helpers of the encoder-decoder tests: small float64 models with weights large enough that greedy and beam
search produce varied tokens (GPT-2's init makes a fresh model repeat one token), and padded batches."""

from __future__ import annotations

from typing import Any

import torch

from attnlab.models.encdec import EncDecConfig, EncoderDecoder

F64 = torch.float64
PAD, BOS, EOS = 0, 1, 2
V = 37

#: Small options so that windows really cut something at these lengths.
OPTIONS: dict[str, dict[str, Any]] = {"sliding-window": {"window": 3}, "strided": {"stride": 2},
                                       "prefix-lm": {"prefix_len": 3}}


def config(**kw: Any) -> EncDecConfig:
    kw.setdefault("vocab_size", V)
    kw.setdefault("pad_id", PAD)
    kw.setdefault("d_model", 24)
    kw.setdefault("n_heads", 4)
    kw.setdefault("n_encoder_layers", 2)
    kw.setdefault("n_decoder_layers", 2)
    kw.setdefault("max_source_len", 16)
    kw.setdefault("max_target_len", 14)
    for side in ("encoder", "decoder"):
        att = kw.get(f"{side}_attention", "bidirectional" if side == "encoder" else "standard")
        names = att if isinstance(att, list) else [att]
        kw.setdefault(f"{side}_attention_options", {n: OPTIONS[n] for n in dict.fromkeys(names) if n in OPTIONS})
    return EncDecConfig(**kw)


def model(seed: int = 0, std: float = 0.35, **kw: Any) -> EncoderDecoder:
    """A float64 model in eval mode; every matrix ~ N(0, std) so that its predictions vary with the input."""
    torch.manual_seed(seed)
    m = config(**kw).build().to(F64).eval()
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 1)
        for name, p in m.named_parameters():
            if p.ndim >= 2 and "score_weight" not in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=F64) * std)
    return m


def padded(seqs: list[list[int]], pad: int = PAD) -> torch.Tensor:
    """Right-padded ``(B, max len)`` long tensor."""
    L = max(len(s) for s in seqs)
    return torch.tensor([s + [pad] * (L - len(s)) for s in seqs], dtype=torch.long)


def random_sources(lengths: list[int], seed: int = 0) -> list[list[int]]:
    """Sentences ``x [eos]`` of the given total lengths, ids from 3 .. V-1 (never pad, bos or eos inside)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (n - 1,), generator=g).tolist() + [EOS] for n in lengths]
