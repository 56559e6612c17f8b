"""Rotary position embedding (RoPE, Su et al. 2021), shared by every layer that uses it.

Shapes: x is ``(B, H, T, D)`` with ``D`` even. Positions are absolute: in cached decoding the new tokens start
at ``offset = cache.seq_len``. The rotation pairs dimension ``i`` with ``i + D/2`` (the "rotate half" layout).
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_angles(positions: Tensor, dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of shape ``(T, dim)`` for integer ``positions`` of shape ``(T,)``."""
    if dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got head_dim={dim}")
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim))
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, dim/2)
    ang = torch.cat([ang, ang], dim=-1)  # (T, dim)
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, offset: int = 0, base: float = 10000.0) -> Tensor:
    """Rotate ``x`` ``(B, H, T, D)`` by the angles of positions ``offset .. offset + T - 1``."""
    T, D = x.shape[-2], x.shape[-1]
    pos = torch.arange(offset, offset + T, device=x.device)
    cos, sin = rope_angles(pos, D, base)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin
