"""A tiny stand-in language model and corpus for trainer tests (fast, deterministic, dependency-free)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class TinyLM(nn.Module):
    """Embedding -> causal mixing (cumulative mean) -> MLP -> tied head. Has 2-D weights, biases, a norm."""

    def __init__(self, vocab_size: int, d: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d)
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d, vocab_size, bias=False)
        self.head.weight = self.emb.weight
        nn.init.normal_(self.emb.weight, std=0.1)

    def forward(self, idx, targets=None, *, caches=None):
        h = self.emb(idx)  # (B, T, d)
        n = torch.arange(1, idx.size(1) + 1, device=idx.device, dtype=h.dtype)[None, :, None]
        h = h + self.drop(torch.tanh(self.fc(self.norm(h.cumsum(1) / n))))
        logits = self.head(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


@dataclass
class Tok:
    name: str = "char"

    def to_dict(self):
        return {"name": self.name}


@dataclass
class TinyCorpus:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None
    vocab_size: int
    tokenizer: Tok
    name: str = "tiny"


def tiny_corpus(n: int = 4000, vocab: int = 11, seed: int = 0) -> TinyCorpus:
    rng = np.random.default_rng(seed)
    # a learnable sequence: mostly "next = prev + 1 mod vocab", with noise
    toks = np.zeros(n, dtype=np.uint16)
    for i in range(1, n):
        toks[i] = (toks[i - 1] + 1) % vocab if rng.random() < 0.8 else rng.integers(vocab)
    a, b = int(n * 0.8), int(n * 0.9)
    return TinyCorpus(toks[:a], toks[a:b], toks[b:], vocab, Tok())
