"""Reference windowed decayed attention: the specification the banded, SDPA and FlexAttention forms are tested against.

Shape legend: B batch, H heads, T query length, S key length, D head dim, Dv value dim.

Eager and dense, exact in float64:

1. scores ``s = scale * q @ k^T``                                         ``(B, H, T, S)``
2. the score modification on every entry, ``s = mod(s, b, h, i, j)``      (:class:`DecayScoreMod`)
3. ``s = -inf`` where the window mask hides key ``j`` from query ``i``
4. softmax over ``j`` (a row with no visible key gets probability 0 everywhere, so its output is 0, not NaN)
5. ``o = p @ v``                                                          ``(B, H, T, Dv)``
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.masks import Mask, dense
from attnlab.ops.decayed.score_mod import DecayScoreMod, index_grids

__all__ = ["reference_decayed_attention", "reference_decayed_probs"]


def reference_decayed_probs(q: Tensor, k: Tensor, *, mask: Mask, mod: DecayScoreMod, scale: float) -> Tensor:
    """Steps 1-4: the attention weights ``(B, H, T, S)``."""
    B, H, T, _ = q.shape
    S = k.shape[2]
    s = (q @ k.transpose(-2, -1)) * scale  # (B, H, T, S)
    s = mod(s, *index_grids(B, H, T, S, q.device))  # (B, H, T, S)
    allowed = dense(mask, T, S, q_offset=mod.q_offset, device=q.device)  # (T, S): query row i at q_offset + i
    has_key = allowed.any(dim=-1, keepdim=True)  # (T, 1)
    s = s.masked_fill(~allowed, float("-inf")).masked_fill(~has_key, 0.0)  # (B, H, T, S)
    return torch.softmax(s, dim=-1) * has_key  # (B, H, T, S)


def reference_decayed_attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Mask, mod: DecayScoreMod,
                                scale: float) -> Tensor:
    """Steps 1-5 of the module docstring: ``(B, H, T, Dv)``."""
    return reference_decayed_probs(q, k, mask=mask, mod=mod, scale=scale) @ v  # (B, H, T, Dv)
