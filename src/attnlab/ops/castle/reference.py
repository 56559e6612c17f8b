"""CASTLE, recurrent definition (spec section 1): the specification every faster form is tested against.

Shape legend: B batch, H heads, T sequence length, D head dim. All inputs are ``(B, H, T, D)``.
Positions are 0-based here (the paper is 1-based): output row ``t`` is computed from tokens ``0..t``.

For every step ``t`` the lookahead keys ``U^t`` of all tokens ``s <= t`` are rebuilt from scratch
(eqs. 3-4 / 9), then the current causal query scores the causal keys and the lookahead keys (eqs. 5-8)::

    u^t_s = sum_{j = s+1}^{min(t, s+W)} sigmoid(q^U_s . k^U_j * scale) v^U_j          (u^t_t = 0)
    a_t   = q^C_t K^C_{0..t}^T * scale - SiLU(q^C_t U^t^T * scale)
    o_t   = softmax(a_t) V^C_{0..t}

``W`` is the ``lookahead`` argument (the paper's W, eq. 9): the lookahead key of token ``s`` summarises
``x_{s+1..s+W}``, the current token not counted; ``lookahead=None`` drops the ``s+W`` bound (full CASTLE).

This costs O(T^3 D) and is meant to be read, not to be fast. It imports nothing but torch.

float16/bfloat16 inputs are computed in float32 and the output cast back (as in the parallel and chunked forms).
Row ``t`` reads positions ``0..t`` only (slices, not masks), so a NaN or inf at a later position never reaches it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.ops._precision import half_in_float32

__all__ = ["castle_reference", "lookahead_allowed", "lookahead_keys_at"]


def lookahead_allowed(rows: Tensor, cols: Tensor, lookahead: int | None) -> Tensor:
    """Where the lookahead mask ``M^U`` is 0 (pass-through): ``row < col`` and, for SWL, ``col <= row + lookahead``.

    ``rows`` are the positions ``s`` that own a lookahead key, ``cols`` the contributors ``j``; both are
    absolute 0-based positions. Returns a ``(len(rows), len(cols))`` bool tensor.
    """
    allowed = rows[:, None] < cols[None, :]
    if lookahead is not None:
        allowed = allowed & (cols[None, :] <= rows[:, None] + lookahead)
    return allowed


def lookahead_keys_at(q_u: Tensor, k_u: Tensor, v_u: Tensor, t: int, *, lookahead: int | None = None,
                      scale: float | None = None) -> Tensor:
    """``U^t`` (eq. 3): the lookahead keys of tokens ``0..t`` once token ``t`` is known, ``(B, H, t+1, D)``."""
    scale = q_u.shape[-1] ** -0.5 if scale is None else scale
    pos = torch.arange(t + 1, device=q_u.device)
    allowed = lookahead_allowed(pos, pos, lookahead)  # (t+1, t+1)
    gate = torch.sigmoid(q_u[..., : t + 1, :] @ k_u[..., : t + 1, :].transpose(-1, -2) * scale)  # (B, H, t+1, t+1)
    gate = torch.where(allowed, gate, torch.zeros((), dtype=gate.dtype, device=gate.device))
    return gate @ v_u[..., : t + 1, :]  # (B, H, t+1, D)


@half_in_float32
def castle_reference(q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor, *,
                     lookahead: int | None = None, scale: float | None = None) -> Tensor:
    """CASTLE by its recurrent definition, one output row at a time. Inputs and output ``(B, H, T, D)``.

    Args:
        q_u, k_u, v_u: lookahead-branch queries, keys and values.
        q_c, k_c, v_c: causal-branch queries, keys and values.
        lookahead: CASTLE-SWL's ``W`` (the paper's W, eq. 9): the lookahead key of token ``s`` summarises
            ``x_{s+1..s+W}``, the current token not counted (``W = 0`` allowed); ``None``: unbounded (full CASTLE).
        scale: score scale, default ``1/sqrt(D)``; used inside the sigmoid, in ``s^C`` and in ``s^U``.

    float16/bfloat16 are computed in float32 and the output is returned in the input dtype.
    """
    scale = 1.0 / math.sqrt(q_u.shape[-1]) if scale is None else scale
    T = q_u.shape[-2]
    rows = []
    for t in range(T):  # t+1 tokens known; this is output row t
        u = lookahead_keys_at(q_u, k_u, v_u, t, lookahead=lookahead, scale=scale)  # (B, H, t+1, D)
        q = q_c[..., t : t + 1, :]  # (B, H, 1, D)
        s_c = q @ k_c[..., : t + 1, :].transpose(-1, -2) * scale  # (B, H, 1, t+1)
        s_u = q @ u.transpose(-1, -2) * scale  # (B, H, 1, t+1)
        p = torch.softmax(s_c - F.silu(s_u), dim=-1)  # (B, H, 1, t+1)
        rows.append(p @ v_c[..., : t + 1, :])  # (B, H, 1, D)
    return torch.cat(rows, dim=-2)
