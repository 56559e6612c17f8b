"""Parallel (quadratic) form of linear attention: one masked matrix product.

Shapes (legend): B batch, H heads (keys/values already expanded to the query heads), T query length,
S key length, F feature dim, Dv value head dim. Inputs are features ``fq = phi(q)`` ``(B, H, T, F)``,
``fk = phi(k)`` ``(B, H, S, F)`` and values ``v`` ``(B, H, S, Dv)``.

    A   = phi(Q) phi(K)^T  (lower triangle only when causal)          (B, H, T, S)
    out = (A V + phi(Q) S_0) / (A 1 + phi(Q) z_0 + eps)

the same numbers as the recurrent specification, computed in ``O(T S (F + Dv))`` time and ``O(T S)`` memory.
The returned state is ``(S_0 + phi(K)^T V, z_0 + sum_j phi(k_j))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["linear_attention_parallel"]


def linear_attention_parallel(
    fq: Tensor,
    fk: Tensor,
    v: Tensor,
    *,
    causal: bool,
    initial_state: tuple[Tensor, Tensor] | None,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns ``(out (B, H, T, Dv), kv (B, H, F, Dv), z (B, H, F))``. Causal requires ``S == T``."""
    a = fq @ fk.transpose(-1, -2)  # (B, H, T, S)
    if causal:
        a = torch.tril(a)  # key j visible to query t iff j <= t
    num = a @ v  # (B, H, T, Dv)
    den = a.sum(-1)  # (B, H, T)
    kv = fk.transpose(-1, -2) @ v  # (B, H, F, Dv)
    z = fk.sum(-2)  # (B, H, F)
    if initial_state is not None:
        kv0, z0 = initial_state
        num = num + fq @ kv0  # (B, H, T, Dv)
        den = den + (fq @ z0.unsqueeze(-1)).squeeze(-1)  # (B, H, T)
        kv = kv0 + kv
        z = z0 + z
    return num / (den + eps).unsqueeze(-1), kv, z
