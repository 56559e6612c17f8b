"""Windowed decayed attention through SDPA with a float mask (``bias`` where visible, ``-inf`` elsewhere).

Shape legend: B batch, H heads, T query length, S key length, D head dim, Dv value dim.

SDPA adds a float ``attn_mask`` to ``scale * q @ k^T``; that expresses the score modifications that are a
score-independent bias: ``decay="additive"`` and ``decay="none"`` (with or without the relative table). The paper's
``decay="multiplicative"`` scales each score by ``exp(-gamma |d|)``, which no additive mask can do without first
materialising the scores (then SDPA would add nothing to the reference), so it raises ``ValueError``. Gradients
reach ``gamma`` and the relative table through the float mask (SDPA differentiates ``attn_mask``). Window rows
always see their own key, so no row is empty.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from attnlab.masks import Mask, dense
from attnlab.ops.decayed.score_mod import DecayScoreMod

__all__ = ["sdpa_decayed_attention"]


def sdpa_decayed_attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Mask, mod: DecayScoreMod,
                           scale: float) -> Tensor:
    """``softmax(scale q k^T + bias + mask) v`` via SDPA; see the module docstring. ``(B, H, T, Dv)``."""
    if not mod.is_bias:
        raise ValueError(f"impl='sdpa' supports decay='additive' or 'none' (an additive float mask), got "
                         f"decay={mod.decay!r}; use impl='reference', 'dense', 'banded' or 'flex'")
    B, H, T, _ = q.shape
    S = k.shape[2]
    allowed = dense(mask, T, S, q_offset=mod.q_offset, device=q.device)  # (T, S)
    bias = mod.bias(B, H, T, S, dtype=q.dtype, device=q.device)  # (B or 1, H or 1, T, S)
    float_mask = bias.masked_fill(~allowed, float("-inf"))  # (B or 1, H or 1, T, S)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask, scale=scale)  # (B, H, T, Dv)
