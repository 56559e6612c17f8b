"""Tiny toy mechanisms for testing the tools themselves (checks, benchmarks, CLI), never registered globally.

:func:`toy_spec` builds a :class:`~attnlab.layers.registry.MechanismSpec` for a minimal softmax attention layer
with two backends (``"reference"``: explicit softmax; ``"sdpa"``: PyTorch SDPA) and a KV cache. Its ``fault``
argument plants one deliberate defect, so that tests can show that every check *can fail*:

* ``"leak-future"``: query ``i`` also sees key ``i + 1`` (a causal layer that leaks);
* ``"backend-differs"``: the ``"sdpa"`` backend adds a small error to its output;
* ``"cache-drifts"``: cached decoding adds a small error at every decoded step;
* ``"batch-mixes"``: the output of each example depends on the batch mean;
* ``"crash"``: forward raises.

Tests register a toy with ``monkeypatch.setitem(registry.MECHANISMS.entries, spec.name, spec)`` so that it
disappears afterwards. Shapes: x ``(B, T, d_model)``; heads ``(B, H, T, D)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.cache.base import AttentionCache
from attnlab.layers.registry import MechanismSpec

__all__ = ["Fault", "ToyConfig", "ToyAttention", "ToyCache", "toy_spec"]

Fault = Literal["none", "leak-future", "backend-differs", "cache-drifts", "batch-mixes", "crash"]
_FAULTS = ("none", "leak-future", "backend-differs", "cache-drifts", "batch-mixes", "crash")
_IMPLS = ("reference", "sdpa")


class ToyCache(AttentionCache):
    """Keys and values of every position seen so far, ``(B, H, S, D)`` each."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @property
    def seq_len(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def memory_bytes(self) -> int:
        return self._nbytes(self.k, self.v)

    def reset(self) -> None:
        self.k = self.v = None


@dataclass(kw_only=True)
class ToyConfig:
    d_model: int
    n_heads: int
    head_dim: int | None = None
    impl: str = "reference"
    causal: bool = True
    rope: bool = False
    dropout: float = 0.0
    fault: str = "none"

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if self.impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {self.impl!r}")
        if self.fault not in _FAULTS:
            raise ValueError(f"fault must be one of {_FAULTS}, got {self.fault!r}")

    def build(self) -> "ToyAttention":
        return ToyAttention(self)


class ToyAttention(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.impl = cfg.impl
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.n_heads * self.head_dim)
        self.out = nn.Linear(cfg.n_heads * self.head_dim, cfg.d_model)

    def new_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> ToyCache:
        return ToyCache()

    def _visible(self, q_len: int, kv_len: int, offset: int, device: torch.device) -> Tensor:
        i = torch.arange(q_len, device=device).view(-1, 1) + offset
        j = torch.arange(kv_len, device=device).view(1, -1)
        if not self.cfg.causal:
            return torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
        lag = 1 if self.cfg.fault == "leak-future" else 0
        return j <= i + lag  # (T, S)

    def forward(self, x: Tensor, *, context: Tensor | None = None, cache: ToyCache | None = None) -> Tensor:
        if self.cfg.fault == "crash":
            raise RuntimeError("toy fault: crash")
        if self.impl not in _IMPLS:
            raise ValueError(f"impl must be one of {_IMPLS}, got {self.impl!r}")
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        offset = 0
        if cache is not None:
            offset = cache.seq_len
            if cache.k is not None:
                k = torch.cat([cache.k, k], dim=2)
                v = torch.cat([cache.v, v], dim=2)
            cache.k, cache.v = k, v
        vis = self._visible(T, k.shape[2], offset, x.device)  # (T, S)
        if self.impl == "reference":
            s = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, H, T, S)
            s = s.masked_fill(~vis, float("-inf"))
            y = torch.softmax(s, dim=-1) @ v  # (B, H, T, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=vis)
            if self.cfg.fault == "backend-differs":
                y = y + 1e-6
        if cache is not None and self.cfg.fault == "cache-drifts" and offset > 0:
            y = y + 1e-6 * offset
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, H*D)
        if self.cfg.fault == "batch-mixes":
            y = y + 1e-3 * y.mean(dim=0, keepdim=True)
        return self.out(y)


def toy_spec(name: str = "toy", *, causal: bool = True, declared_causal: bool | None = None,
             fault: Fault = "none", cache: bool | None = None) -> MechanismSpec:
    """A spec for a toy layer; ``declared_causal`` lets a test lie about causality (default: ``causal``).

    ``cache`` (default: ``causal``) declares cached decoding support.
    """
    if fault not in _FAULTS:
        raise ValueError(f"fault must be one of {_FAULTS}, got {fault!r}")

    def make_config(*, d_model: int, n_heads: int, **options: object) -> ToyConfig:
        return ToyConfig(d_model=d_model, n_heads=n_heads, causal=causal, fault=fault, **options)  # type: ignore[arg-type]

    return MechanismSpec(
        name=name,
        description=f"toy softmax attention for tests (fault={fault})",
        make_config=make_config,
        causal=causal if declared_causal is None else declared_causal,
        cache="kv" if (causal if cache is None else cache) else None,
        backends=_IMPLS,
    )
