"""Recurrent form of linear attention: an explicit loop over time. **This is the specification.**

Shapes (legend): B batch, H heads (keys/values already expanded to the query heads), T query length,
S key length, F feature dim, Dv value head dim. Inputs are *features*: ``fq = phi(q)`` ``(B, H, T, F)``,
``fk = phi(k)`` ``(B, H, S, F)``, and values ``v`` ``(B, H, S, Dv)``; the public entry point
:func:`attnlab.ops.linear.linear_attention` applies the feature map and validates the inputs.

State after key ``t``::

    S_t = S_0 + sum_{j <= t} phi(k_j)^T v_j        (B, H, F, Dv)
    z_t = z_0 + sum_{j <= t} phi(k_j)              (B, H, F)
    out_t = phi(q_t) S_t / (phi(q_t) . z_t + eps)

with ``(S_0, z_0)`` the initial state (zeros when none). Bidirectional (``causal=False``): every query uses the
state after *all* ``S`` keys. The returned state is always the state after all keys, so running two segments
with the state carried over equals running the whole sequence.

Cost: ``O(T F Dv)`` time, ``O(F Dv)`` state, but ``T`` sequential Python steps: use it for decoding one token
at a time and as the reference; the chunked form is the fast one.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.ops.linear.state import LinearState

__all__ = ["linear_attention_recurrent", "recurrent_step", "read_out"]


def read_out(fq_t: Tensor, kv: Tensor, z: Tensor, eps: float) -> Tensor:
    """``phi(q_t) S / (phi(q_t) . z + eps)`` for one time step: ``fq_t`` ``(B, H, F)`` -> ``(B, H, Dv)``."""
    num = (fq_t.unsqueeze(-1) * kv).sum(-2)  # (B, H, Dv)
    den = (fq_t * z).sum(-1)  # (B, H)
    return num / (den + eps).unsqueeze(-1)


def recurrent_step(fk_t: Tensor, v_t: Tensor, kv: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Add key ``t`` to the state: ``fk_t`` ``(B, H, F)``, ``v_t`` ``(B, H, Dv)`` -> new ``(kv, z)``."""
    kv = kv + fk_t.unsqueeze(-1) * v_t.unsqueeze(-2)  # (B, H, F, Dv)
    z = z + fk_t  # (B, H, F)
    return kv, z


def linear_attention_recurrent(
    fq: Tensor, fk: Tensor, v: Tensor, state: LinearState, *, causal: bool, eps: float
) -> tuple[Tensor, LinearState]:
    """Loop over time from ``state``. Returns ``out (B, H, T, Dv)`` and the state after all keys."""
    T, S = fq.shape[2], v.shape[2]
    kv, z = state
    outs: list[Tensor] = []
    if causal:  # S == T: key t enters the state, then query t reads it
        for t in range(T):
            kv, z = recurrent_step(fk[:, :, t], v[:, :, t], kv, z)
            outs.append(read_out(fq[:, :, t], kv, z, eps))
    else:  # every query reads the state after all keys
        for j in range(S):
            kv, z = recurrent_step(fk[:, :, j], v[:, :, j], kv, z)
        for t in range(T):
            outs.append(read_out(fq[:, :, t], kv, z, eps))
    return torch.stack(outs, dim=2), LinearState(kv, z)  # (B, H, T, Dv)
