"""A tiny causal attention mechanism for the model tests, registered only while a test needs it.

It lets the LM tests run whatever the registry holds (and checks that the LM treats mechanisms generically):
causal softmax attention with RoPE and a plain key/value cache, written out in a few lines.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.layers import registry
from attnlab.layers.registry import MechanismSpec
from attnlab.layers.rope import apply_rope
from attnlab.verify.toys import ToyCache  # the same plain key/value cache the verification toys use


@dataclass(kw_only=True)
class TinyConfig:
    d_model: int
    n_heads: int
    head_dim: int | None = None
    rope: bool = False
    rope_base: float = 10000.0
    dropout: float = 0.0
    impl: str = "reference"

    def build(self) -> TinyAttention:
        return TinyAttention(self)


class TinyAttention(nn.Module):
    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
        self.impl = cfg.impl
        self.qkv = nn.Linear(cfg.d_model, 3 * self.n_heads * self.head_dim, bias=False)
        self.out_proj = nn.Linear(self.n_heads * self.head_dim, cfg.d_model, bias=False)

    def new_cache(self, batch_size: int, *, device: object = None, dtype: object = None) -> ToyCache:
        return ToyCache()

    def forward(self, x: Tensor, *, context: Tensor | None = None, cache: ToyCache | None = None) -> Tensor:
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        off = cache.seq_len if cache is not None else 0
        if self.cfg.rope:
            q, k = apply_rope(q, off, self.cfg.rope_base), apply_rope(k, off, self.cfg.rope_base)
        if cache is not None:
            if cache.k is not None:
                k, v = torch.cat([cache.k, k], 2), torch.cat([cache.v, v], 2)
            cache.k, cache.v = k, v
        S = k.shape[2]
        visible = (torch.arange(T)[:, None] + off) >= torch.arange(S)[None, :]  # (T, S)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(D)  # (B, H, T, S)
        att = att.masked_fill(~visible, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, H * D)
        return self.out_proj(y)


TINY = MechanismSpec(name="test-tiny", description="test-only causal attention", make_config=TinyConfig,
                     causal=True, cache="kv")
TINY_NO_CACHE = MechanismSpec(name="test-tiny-nocache", description="test-only, no cache", make_config=TinyConfig,
                              causal=True, cache=None)
TINY_PARITY = MechanismSpec(name="test-tiny-4of7", description="test-only, 4/7 heads at parity",
                            make_config=TinyConfig, causal=True, cache="kv",
                            heads_for_parity=lambda n: 4 * n // 7)


@contextmanager
def registered() -> Iterator[None]:
    """Register the test mechanisms for the duration of a test, then remove them."""
    specs = (TINY, TINY_NO_CACHE, TINY_PARITY)
    registry.names()  # load the built-in mechanisms first
    for spec in specs:
        registry.register(spec)
    try:
        yield
    finally:
        for spec in specs:
            registry._REGISTRY.pop(spec.name, None)
