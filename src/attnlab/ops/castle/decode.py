"""CASTLE decoding with the UQ-KV cache (spec section 3, Algorithms 4-5).

Shape legend: B batch, H heads, T prompt length, t tokens seen so far, r retained rows of Q^U, D head dim.

The state after ``t`` tokens is ``(U^t, Q^U, K^C, V^C)``. A new token at position ``t`` (0-based) updates the
lookahead keys with one rank-1 term (eq. 13)::

    u_s += sigmoid(q^U_s . k^U_t * scale) v^U_t      for s < t (and s >= t - W for CASTLE-SWL, W = lookahead)
    u_t  = 0

then attends exactly like one row of the parallel form. Work per step is O(t D). For CASTLE-SWL rows older
than ``t - W`` never change again, so only the last ``W`` rows of ``Q^U`` are kept (``U`` is kept in full).

This module is functional (states are immutable tuples, each step concatenates: O(t D) copies per step);
:class:`attnlab.cache.uqkv.UQKVCache` keeps preallocated buffers and updates them in place with the same math.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.ops.castle.api import (
    CastleImpl,
    _resolve_scale,
    castle_attention,
    validate_chunk_size,
    validate_inputs,
    validate_lookahead,
)

__all__ = [
    "CastleState",
    "castle_decode_step",
    "castle_prefill",
    "decode_attend",
    "empty_state",
    "lookahead_keys",
    "lookahead_update",
    "retained_rows",
]


class CastleState(NamedTuple):
    """The UQ-KV state after ``t`` tokens.

    Attributes:
        u: ``U^t``, the current lookahead keys of every token, ``(B, H, t, D)``.
        q_u: the rows of ``Q^U`` that later tokens can still update, ``(B, H, r, D)``: all ``t`` rows for CASTLE,
            the last ``min(t, W)`` for CASTLE-SWL (positions ``t - r .. t - 1``).
        k_c: causal keys ``(B, H, t, D)``.
        v_c: causal values ``(B, H, t, D)``.
    """

    u: Tensor
    q_u: Tensor
    k_c: Tensor
    v_c: Tensor

    @property
    def seq_len(self) -> int:
        return self.u.shape[-2]


def retained_rows(t: int, lookahead: int | None) -> int:
    """How many rows of ``Q^U`` the state keeps after ``t`` tokens: ``t`` (CASTLE) or ``min(t, W)`` (SWL)."""
    return t if lookahead is None else min(t, lookahead)


def empty_state(batch_size: int, n_heads: int, head_dim: int, *, device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> CastleState:
    """The state before any token (``t = 0``)."""
    z = torch.zeros(batch_size, n_heads, 0, head_dim, device=device, dtype=dtype)
    return CastleState(z, z, z, z)


def lookahead_keys(q_u: Tensor, k_u: Tensor, v_u: Tensor, *, lookahead: int | None = None,
                   scale: float | None = None, chunk_size: int = 64) -> Tensor:
    """``U^T = sigmoid(Q^U K^U^T * scale + M^U) V^U`` (eq. 3), ``(B, H, T, D)``, one chunk of owner rows at a time.

    Transient memory is ``chunk_size x T`` per head (no ``T x T`` tensor); for SWL (``lookahead=W``) only the ``W``
    contributors after each row of a chunk are visited.
    """
    lookahead = validate_lookahead(lookahead)
    validate_chunk_size(chunk_size)
    B, H, T, D = q_u.shape
    scale = _resolve_scale(scale, D)
    pos = torch.arange(T, device=q_u.device)
    out = []
    for r0 in range(0, T, chunk_size):
        r1 = min(T, r0 + chunk_size)
        c0, c1 = r0 + 1, T if lookahead is None else min(T, r1 + lookahead)  # contributors j in (s, s + W]
        if c1 <= c0:
            out.append(q_u.new_zeros(B, H, r1 - r0, D))
            continue
        allowed = pos[r0:r1, None] < pos[None, c0:c1]  # (C, c1 - c0)
        if lookahead is not None:
            allowed = allowed & (pos[None, c0:c1] <= pos[r0:r1, None] + lookahead)
        g = torch.sigmoid(q_u[..., r0:r1, :] @ k_u[..., c0:c1, :].transpose(-1, -2) * scale)  # (B, H, C, c1-c0)
        g = g.masked_fill(~allowed, 0.0)
        out.append(g @ v_u[..., c0:c1, :])  # (B, H, C, D)
    return torch.cat(out, dim=-2)


def lookahead_update(q_u_rows: Tensor, k_u: Tensor, v_u: Tensor, scale: float) -> Tensor:
    """Eq. (13)'s rank-1 increment for the updatable rows: ``sigmoid(Q^U_rows k^U_t^T * scale) v^U_t``, ``(B, H, r, D)``."""
    return torch.sigmoid(q_u_rows @ k_u.transpose(-1, -2) * scale) * v_u  # (B, H, r, 1) * (B, H, 1, D)


def decode_attend(q_c: Tensor, k_c: Tensor, u: Tensor, v_c: Tensor, scale: float) -> Tensor:
    """One output row: ``softmax(q^C K^C^T * s - SiLU(q^C U^T * s)) V^C``; ``q_c`` ``(B, H, 1, D)``, rest ``(B, H, t, D)``."""
    s_c = q_c @ k_c.transpose(-1, -2) * scale  # (B, H, 1, t)
    s_u = q_c @ u.transpose(-1, -2) * scale  # (B, H, 1, t)
    return torch.softmax(s_c - F.silu(s_u), dim=-1) @ v_c  # (B, H, 1, D)


def castle_prefill(q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor, *,
                   lookahead: int | None = None, scale: float | None = None, impl: CastleImpl = "auto",
                   chunk_size: int = 64) -> tuple[Tensor, CastleState]:
    """Algorithm 4: outputs for a prompt ``(B, H, T, D)`` and the state ``(U^T, Q^U, K^C, V^C)`` to decode from."""
    out = castle_attention(q_u, k_u, v_u, q_c, k_c, v_c, lookahead=lookahead, scale=scale, impl=impl,
                           chunk_size=chunk_size)
    u = lookahead_keys(q_u, k_u, v_u, lookahead=lookahead, scale=scale, chunk_size=chunk_size)
    T = q_u.shape[-2]
    keep = retained_rows(T, lookahead)
    return out, CastleState(u, q_u[..., T - keep :, :], k_c, v_c)


def castle_decode_step(q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor,
                       state: CastleState | None, *, lookahead: int | None = None,
                       scale: float | None = None) -> tuple[Tensor, CastleState]:
    """Algorithm 5: one new token (six ``(B, H, 1, D)`` projections) -> output ``(B, H, 1, D)`` and the next state.

    ``state=None`` starts from an empty prompt. ``lookahead`` must be the one the state was built with.
    """
    validate_inputs(q_u, k_u, v_u, q_c, k_c, v_c)
    lookahead = validate_lookahead(lookahead)
    B, H, T, D = q_u.shape
    if T != 1:
        raise ValueError(f"castle_decode_step takes one token: q_u must have shape (B, H, 1, D), got {tuple(q_u.shape)}")
    scale = _resolve_scale(scale, D)
    if state is None:
        state = empty_state(B, H, D, device=q_u.device, dtype=q_u.dtype)
    t = state.seq_len
    for name, x in zip(("u", "q_u", "k_c", "v_c"), state):
        if not isinstance(x, Tensor):
            raise ValueError(f"state.{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype != q_u.dtype:
            raise ValueError(f"state.{name} must have the dtype of q_u ({q_u.dtype}), got {x.dtype}")
        if x.device != q_u.device:
            raise ValueError(f"state.{name} must be on the device of q_u ({q_u.device}), got {x.device}")
    for name, x in zip(("u", "k_c", "v_c"), (state.u, state.k_c, state.v_c)):
        if x.shape != (B, H, t, D):
            raise ValueError(f"state.{name} must have shape {(B, H, t, D)}, got {tuple(x.shape)}")
    r = retained_rows(t, lookahead)
    if state.q_u.shape != (B, H, r, D):
        raise ValueError(f"state.q_u must have shape {(B, H, r, D)} for lookahead={lookahead} after t={t} tokens, "
                         f"got {tuple(state.q_u.shape)}")
    inc = lookahead_update(state.q_u, k_u, v_u, scale)  # (B, H, r, D): rows t-r .. t-1
    u = torch.cat([state.u[..., : t - r, :], state.u[..., t - r :, :] + inc, torch.zeros_like(v_u)], dim=-2)
    k_all = torch.cat([state.k_c, k_c], dim=-2)  # (B, H, t+1, D)
    v_all = torch.cat([state.v_c, v_c], dim=-2)  # (B, H, t+1, D)
    out = decode_attend(q_c, k_all, u, v_all, scale)
    q_rows = torch.cat([state.q_u, q_u], dim=-2)
    q_rows = q_rows[..., q_rows.shape[-2] - retained_rows(t + 1, lookahead) :, :]
    return out, CastleState(u, q_rows, k_all, v_all)
