"""CASTLE, parallel form (Theorem 1, spec section 2.1): materialises ``T x T`` matrices; plain autograd.

Shape legend: B batch, H heads, T sequence length, D head dim. All inputs are ``(B, H, T, D)``.

    G   = sigmoid(Q^U K^U^T * scale) masked by M^U (0 where not allowed)           (T x T)
    S^U = ((Q^C V^U^T * scale) * causal) @ G^T                                    (eq. 11)
    O   = softmax(Q^C K^C^T * scale + M^C - SiLU(S^U)) V^C                          (eq. 12)

Memory is O(T^2) per head and the product in eq. 11 costs O(T^3); use it as a readable second opinion and
for small T.

float16/bfloat16 inputs are computed in float32 and the output cast back to the input dtype (gradients flow back
in the input dtype), as the chunked form does: in half precision the ``T x T`` logits and ``S^U`` lose the
digits that the softmax exponentiates. Measured (B=1, H=2, T=32, D=16, the U and causal queries and keys scaled by
10, 3 seeds, largest output error against float64 on the same rounded inputs): computed in the input dtype, 0.59 in
bfloat16 and 0.036 in float16; in float32 internally, 0.0062 and 0.00092 (the final rounding to the input dtype).

NaN and inf at future positions (measured, not guarded): a non-finite ``v^C`` at position ``j`` reaches every
row ``t < j`` (``softmax @ V^C`` multiplies its zero probability by it) and a non-finite ``k^U`` reaches every row
(``S^U = (...) @ G^T`` multiplies zeroed entries by gate entries of future contributors); ``q^U``, ``v^U``,
``q^C``, ``k^C`` are masked by replacement and do not leak. :func:`castle_reference` never touches a future
position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.ops._precision import half_in_float32

__all__ = ["castle_parallel", "lookahead_gate", "lookahead_scores"]


def _allowed(T: int, lookahead: int | None, device: torch.device) -> Tensor:
    pos = torch.arange(T, device=device)
    allowed = pos[:, None] < pos[None, :]  # s < j
    if lookahead is not None:
        allowed = allowed & (pos[None, :] <= pos[:, None] + lookahead)  # j <= s + W
    return allowed  # (T, T)


def lookahead_gate(q_u: Tensor, k_u: Tensor, *, lookahead: int | None = None, scale: float | None = None) -> Tensor:
    """``sigmoid(Q^U K^U^T * scale + M^U)``: ``(B, H, T, T)``, rows are key owners ``s``, columns contributors ``j``."""
    scale = 1.0 / math.sqrt(q_u.shape[-1]) if scale is None else scale
    T = q_u.shape[-2]
    gate = torch.sigmoid(q_u @ k_u.transpose(-1, -2) * scale)  # (B, H, T, T)
    return torch.where(_allowed(T, lookahead, q_u.device), gate, torch.zeros((), dtype=gate.dtype, device=gate.device))


def lookahead_scores(q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, *, lookahead: int | None = None,
                     scale: float | None = None) -> Tensor:
    """``S^U`` of eq. (11), ``(B, H, T, T)``: row ``t`` holds ``q^C_t . u^t_s * scale``; strictly lower triangular."""
    scale = 1.0 / math.sqrt(q_u.shape[-1]) if scale is None else scale
    T = q_u.shape[-2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q_u.device).tril()  # (T, T)
    gate = lookahead_gate(q_u, k_u, lookahead=lookahead, scale=scale)  # (B, H, T, T)
    cv = torch.where(causal, q_c @ v_u.transpose(-1, -2) * scale, torch.zeros((), dtype=q_c.dtype,
                                                                               device=q_c.device))  # (B, H, T, T)
    return cv @ gate.transpose(-1, -2)  # (B, H, T, T)


@half_in_float32
def castle_parallel(q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor, *,
                    lookahead: int | None = None, scale: float | None = None) -> Tensor:
    """CASTLE by Theorem 1 (eqs. 11-12). Inputs and output ``(B, H, T, D)``; see :func:`castle_reference`.

    float16/bfloat16 are computed in float32 and the output is returned in the input dtype."""
    scale = 1.0 / math.sqrt(q_u.shape[-1]) if scale is None else scale
    T = q_u.shape[-2]
    causal = torch.ones(T, T, dtype=torch.bool, device=q_u.device).tril()  # (T, T)
    s_u = lookahead_scores(q_u, k_u, v_u, q_c, lookahead=lookahead, scale=scale)  # (B, H, T, T)
    logits = q_c @ k_c.transpose(-1, -2) * scale - F.silu(s_u)  # (B, H, T, T)
    logits = logits.masked_fill(~causal, float("-inf"))
    return torch.softmax(logits, dim=-1) @ v_c  # (B, H, T, D)
