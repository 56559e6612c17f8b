"""Banded windowed decayed attention: each query scores only its own ``R = lookback + 1`` keys, so time and memory
grow linearly in the sequence length for a fixed window (spec ``time_series.md`` C.12 oracle 8).

Shape legend: B batch, H heads, T query length, S key length, D head dim, Dv value dim, R window keys.

The keys are padded in front with ``R - 1`` zero rows; column ``r`` of query row ``i``'s window holds key index
``S - T + i - (R - 1) + r``, i.e. offset ``d = R - 1 - r``, so column ``r`` of every row comes from one shifted slice
of the padded keys. Scores and outputs are computed one diagonal at a time (``R`` elementwise products over
``(B, H, T, D)``): on a CPU this is about 3x faster, forward and backward, than gathering each row's window with
``Tensor.unfold`` and contracting it with ``einsum`` (which becomes a batch of ``B H T`` tiny matrix products plus
copies of the windows). Columns before the first key (padding) are masked. The keys must end with the last query
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
    k_pad = F.pad(k, (0, 0, R - 1, 0))  # (B, H, S + R - 1, D)
    v_pad = F.pad(v, (0, 0, R - 1, 0))  # (B, H, S + R - 1, Dv)
    # column r of every row: the keys shifted by r (a slice of the padded keys)
    s = torch.stack([(q * k_pad[:, :, first + r : first + r + T]).sum(-1) for r in range(R)], dim=-1) * scale  # (B, H, T, R)
    key_idx = first + torch.arange(T, device=q.device)[:, None] - (R - 1) + torch.arange(R, device=q.device)  # (T, R)
    b = torch.arange(B, device=q.device).view(B, 1, 1, 1)
    h = torch.arange(H, device=q.device).view(1, H, 1, 1)
    rows = torch.arange(T, device=q.device).view(1, 1, T, 1)
    s = mod(s, b, h, rows, key_idx.view(1, 1, T, R))  # (B, H, T, R)
    s = s.masked_fill(key_idx < 0, float("-inf"))  # padding columns; each row keeps at least its own key
    p = torch.softmax(s, dim=-1)  # (B, H, T, R)
    out = p[..., 0, None] * v_pad[:, :, first : first + T]  # (B, H, T, Dv)
    for r in range(1, R):
        out = out + p[..., r, None] * v_pad[:, :, first + r : first + r + T]
    return out
