"""The score modification of windowed decayed attention (AutoHFormer, spec ``time_series.md`` C.3 and C.6).

Shape legend: B batch, H heads, T query length, S key length, D head dim, R relative offsets (``lookback + 1``).

A score modification is a pure function ``score_mod(score, b, h, q_idx, kv_idx) -> score``, FlexAttention's
``score_mod`` form, just as a mask is a predicate in the ``mask_mod`` form (:mod:`attnlab.masks`). The same object
serves the dense reference (called once on broadcast index grids), SDPA (its score-independent part becomes a
float mask) and FlexAttention (called per score under ``vmap``). With ``d = q_pos - kv_pos`` (absolute positions;
``d >= 0`` wherever the causal window lets a key through) and ``s`` the scaled score ``scale * q . k``:

* ``decay="multiplicative"`` (the paper):  ``(s + rel[d]) * exp(-gamma * |d|)``
* ``decay="additive"`` (ablation):         ``s + rel[d] - gamma * |d|``
* ``decay="none"``:                        ``s + rel[d]``

``rel[d]`` is the relative-encoding term ``scale * q . r_d`` of the query's own row (q·(k + r_d) = q·k + q·r_d,
spec section 0): ``score_mod`` does not see ``q``, so the table ``(B, H, T, R)`` is computed first
(:func:`relative_table`) and gathered by offset; offsets ``d >= R`` (never visible through a window of ``R`` keys)
get 0. ``rel=None`` means no relative encoding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["Decay", "DECAYS", "DecayScoreMod", "relative_table", "sinusoidal_offsets"]

Decay = Literal["multiplicative", "additive", "none"]
DECAYS: tuple[str, ...] = ("multiplicative", "additive", "none")


def sinusoidal_offsets(n_offsets: int, dim: int, *, dtype: torch.dtype = torch.float32,
                       device: torch.device | str | None = None) -> Tensor:
    """``r_d`` for ``d = 0 .. n_offsets - 1``: ``(n_offsets, dim)`` with ``r[d, 2i] = sin(d / 10000^(2i/dim))`` and
    ``r[d, 2i+1] = cos(d / 10000^(2i/dim))`` (the figure's sine; the cosine on odd dims is the usual assumption)."""
    d = torch.arange(n_offsets, dtype=torch.float64, device=device)[:, None]  # (R, 1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
    ang = d * freq  # (R, ceil(dim / 2))
    out = torch.empty(n_offsets, dim, dtype=torch.float64, device=device)
    out[:, 0::2] = torch.sin(ang)
    out[:, 1::2] = torch.cos(ang[:, : dim // 2])
    return out.to(dtype)


def relative_table(q: Tensor, r: Tensor, scale: float) -> Tensor:
    """``scale * q . r_d`` for every query row and offset: ``(B, H, T, R)`` from ``q (B, H, T, D)``, ``r (R, D)``."""
    return torch.einsum("bhtd,rd->bhtr", q, r.to(q.dtype)) * scale  # (B, H, T, R)


@dataclass(frozen=True, eq=False)
class DecayScoreMod:
    """The score modification of the module docstring for one call.

    Attributes:
        decay: ``"multiplicative"``, ``"additive"`` or ``"none"``.
        gamma: the decay rate, a 0-dim tensor ``>= 0`` (ignored by ``"none"``); gradients flow to it.
        rel: ``None`` or the table ``(B, H, T, R)`` of :func:`relative_table`, row ``i`` for query row ``i``.
        q_offset: absolute position of query row 0.
        kv_start: absolute position of key column 0 (a sliding cache returns keys from there on).
    """

    decay: str
    gamma: Tensor
    rel: Tensor | None = None
    q_offset: int = 0
    kv_start: int = 0

    @property
    def name(self) -> str:
        return f"decay({self.decay}, rel={'yes' if self.rel is not None else 'no'})"

    @property
    def is_bias(self) -> bool:
        """``True`` when the modification adds a score-independent bias (SDPA can take it as a float mask)."""
        return self.decay != "multiplicative"

    def __call__(self, score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        """``q_idx``/``kv_idx`` are row/column indices (FlexAttention's convention); positions add the offsets."""
        d = (q_idx + self.q_offset) - (kv_idx + self.kv_start)
        if self.rel is not None:
            R = self.rel.shape[-1]
            term = self.rel[b, h, q_idx, d.clamp(0, R - 1)]
            score = score + torch.where((d >= 0) & (d < R), term, torch.zeros_like(term))
        if self.decay == "multiplicative":
            return score * torch.exp(-self.gamma * d.abs())
        if self.decay == "additive":
            return score - self.gamma * d.abs()
        return score

    def bias(self, batch_size: int, n_heads: int, q_len: int, kv_len: int, *, dtype: torch.dtype,
             device: torch.device) -> Tensor:
        """The additive bias ``(B, H, T, S)`` (or ``(1, 1, T, S)`` without ``rel``) of a bias-type modification."""
        if not self.is_bias:
            raise ValueError(f"decay={self.decay!r} scales the score: it is not an additive bias")
        B, H = (batch_size, n_heads) if self.rel is not None else (1, 1)
        b, h, q, kv = index_grids(B, H, q_len, kv_len, device)
        return self(torch.zeros((), dtype=dtype, device=device), b, h, q, kv).expand(B, H, q_len, kv_len)


def index_grids(B: int, H: int, T: int, S: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Broadcastable index tensors ``b (B,1,1,1)``, ``h (1,H,1,1)``, ``q (1,1,T,1)``, ``kv (1,1,1,S)``."""
    ar = lambda n: torch.arange(n, device=device)  # noqa: E731
    return ar(B).view(B, 1, 1, 1), ar(H).view(1, H, 1, 1), ar(T).view(1, 1, T, 1), ar(S).view(1, 1, 1, S)
