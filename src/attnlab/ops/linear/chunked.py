"""Chunked form of linear attention: linear in T, parallel inside each chunk.

Shapes (legend): B batch, H heads (keys/values already expanded to the query heads), T query length,
S key length, F feature dim, Dv value head dim, C chunk size, N = ceil(T / C) chunks. Inputs are features
``fq = phi(q)`` ``(B, H, T, F)``, ``fk = phi(k)`` ``(B, H, S, F)`` and values ``v`` ``(B, H, S, Dv)``.

Causal: the sequence is cut into ``N`` chunks of ``C`` positions (the last one zero-padded when ``C`` does not
divide ``T``; padded keys have zero features and values, so they add nothing, and padded query rows are
dropped). For chunk ``n`` with state ``(S_n, z_n)`` accumulated over all earlier chunks (plus the initial
state)::

    A_n   = tril(phi(Q_n) phi(K_n)^T)                                  (B, H, C, C)
    out_n = (A_n V_n + phi(Q_n) S_n) / (A_n 1 + phi(Q_n) z_n + eps)

and the chunk states are an exclusive prefix sum over chunks of ``phi(K_n)^T V_n``, so all chunks run at once.
Cost ``O(T C (F + Dv) + T F Dv)`` time, ``O(N F Dv)`` memory.

Bidirectional: every query reads the state after all keys, ``phi(Q) (S_0 + phi(K)^T V)``; this is already
linear in ``T`` and ``chunk_size`` plays no role.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.ops.linear.state import LinearState

__all__ = ["linear_attention_chunked"]


def linear_attention_chunked(
    fq: Tensor, fk: Tensor, v: Tensor, state: LinearState, *, causal: bool, eps: float, chunk_size: int
) -> tuple[Tensor, LinearState]:
    """Returns ``out (B, H, T, Dv)`` and the state after all keys. Causal requires ``S == T``. A
    ``chunk_size`` larger than ``T`` is clamped to ``T`` (one chunk, no padding)."""
    if not causal:
        kv = state.kv + fk.transpose(-1, -2) @ v  # (B, H, F, Dv)
        z = state.z + fk.sum(-2)  # (B, H, F)
        num = fq @ kv  # (B, H, T, Dv)
        den = (fq @ z.unsqueeze(-1)).squeeze(-1)  # (B, H, T)
        return num / (den + eps).unsqueeze(-1), LinearState(kv, z)

    B, H, T, Fd = fq.shape
    Dv = v.shape[-1]
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T
    if pad:
        fq, fk, v = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v))
    fq = fq.reshape(B, H, N, C, Fd)  # (B, H, N, C, F)
    fk = fk.reshape(B, H, N, C, Fd)  # (B, H, N, C, F)
    v = v.reshape(B, H, N, C, Dv)  # (B, H, N, C, Dv)

    kv_chunk = fk.transpose(-1, -2) @ v  # (B, H, N, F, Dv): what each chunk adds to the state
    z_chunk = fk.sum(-2)  # (B, H, N, F)
    # exclusive prefix sums over chunks: the state each chunk starts from
    kv_prev = torch.cat([torch.zeros_like(kv_chunk[:, :, :1]), kv_chunk[:, :, :-1]], dim=2).cumsum(2)  # (B,H,N,F,Dv)
    z_prev = torch.cat([torch.zeros_like(z_chunk[:, :, :1]), z_chunk[:, :, :-1]], dim=2).cumsum(2)  # (B, H, N, F)
    kv_prev = kv_prev + state.kv.unsqueeze(2)
    z_prev = z_prev + state.z.unsqueeze(2)

    a = torch.tril(fq @ fk.transpose(-1, -2))  # (B, H, N, C, C)
    num = a @ v + fq @ kv_prev  # (B, H, N, C, Dv)
    den = a.sum(-1) + (fq @ z_prev.unsqueeze(-1)).squeeze(-1)  # (B, H, N, C)
    out = (num / (den + eps).unsqueeze(-1)).reshape(B, H, N * C, Dv)[:, :, :T]  # (B, H, T, Dv)
    kv = kv_prev[:, :, -1] + kv_chunk[:, :, -1]  # (B, H, F, Dv)
    z = z_prev[:, :, -1] + z_chunk[:, :, -1]  # (B, H, F)
    return out, LinearState(kv, z)
