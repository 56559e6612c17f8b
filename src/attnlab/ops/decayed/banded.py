"""Banded windowed decayed attention: each query scores only its own ``R = lookback + 1`` keys, so time and memory
grow linearly in the sequence length for a fixed window (spec ``time_series.md`` C.12 oracle 8).

Shape legend: B batch, H heads, T query length, S key length, D head dim, Dv value dim, R window keys.

The keys are padded in front with ``R - 1`` zero rows and cut into overlapping windows (``Tensor.unfold``, a view);
column ``r`` of query row ``i``'s window holds key index ``S - T + i - (R - 1) + r``, i.e. offset
``d = R - 1 - r``. Columns before the first key (padding) are masked. The keys must end with the last query
(``kv_start + S == q_offset + T``): self-attention over a whole sequence, or a sliding cache plus new steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.ops.decayed.score_mod import DecayScoreMod

__all__ = ["banded_decayed_attention"]


def banded_decayed_attention(q: Tensor, k: Tensor, v: Tensor, *, lookback: int, mod: DecayScoreMod,
                             scale: float) -> Tensor:
    """Windowed decayed attention computed on the band only; see the module docstring. ``(B, H, T, Dv)``."""
    B, H, T, _ = q.shape
    S = k.shape[2]
    R = lookback + 1
    first = S - T  # key index of query row 0's own position
    k_win = F.pad(k, (0, 0, R - 1, 0)).unfold(2, R, 1)[:, :, first:]  # (B, H, T, D, R)
    v_win = F.pad(v, (0, 0, R - 1, 0)).unfold(2, R, 1)[:, :, first:]  # (B, H, T, Dv, R)
    s = torch.einsum("bhtd,bhtdr->bhtr", q, k_win) * scale  # (B, H, T, R)
    key_idx = first + torch.arange(T, device=q.device)[:, None] - (R - 1) + torch.arange(R, device=q.device)  # (T, R)
    b = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h = torch.arange(H, device=q.device).view(1, H, 1, 1)
    rows = torch.arange(T, device=q.device).view(1, 1, T, 1)
    s = mod(s, b, h, rows, key_idx.view(1, 1, T, R))  # (B, H, T, R)
    s = s.masked_fill(key_idx < 0, float("-inf"))  # padding columns; each row keeps at least its own key
    p = torch.softmax(s, dim=-1)  # (B, H, T, R)
    return torch.einsum("bhtr,bhtdr->bhtd", p, v_win)  # (B, H, T, Dv)
