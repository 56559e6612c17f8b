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

from attnlab.ops.linear.state import LinearState

__all__ = ["linear_attention_parallel"]


def linear_attention_parallel(
    fq: Tensor, fk: Tensor, v: Tensor, state: LinearState, *, causal: bool, eps: float
) -> tuple[Tensor, LinearState]:
    """Returns ``out (B, H, T, Dv)`` and the state after all keys. Causal requires ``S == T``."""
    a = fq @ fk.transpose(-1, -2)  # (B, H, T, S)
    if causal:
        a = torch.tril(a)  # key j visible to query t iff j <= t
    num = a @ v + fq @ state.kv  # (B, H, T, Dv)
    den = a.sum(-1) + (fq @ state.z.unsqueeze(-1)).squeeze(-1)  # (B, H, T)
    kv = state.kv + fk.transpose(-1, -2) @ v  # (B, H, F, Dv)
    z = state.z + fk.sum(-2)  # (B, H, F)
    return num / (den + eps).unsqueeze(-1), LinearState(kv, z)
