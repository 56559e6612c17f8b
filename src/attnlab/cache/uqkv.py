"""CASTLE's UQ-KV cache (spec section 3): lookahead keys ``U``, lookahead queries ``Q^U``, causal keys and values.

Shape legend: B batch, H heads, t cached positions, T new positions, r retained rows of Q^U, D head dim.

Per head and token the cache holds ``U`` (updated in place by a rank-1 term at every step, eq. 13), ``Q^U``,
``K^C`` and ``V^C``: 4 D numbers against a KV cache's 2 D. For CASTLE-SWL (``lookahead=W``: a lookahead key
summarises the next ``W`` tokens, the current one not counted) only the last ``W`` rows of ``Q^U`` are kept (older
rows are never updated again); ``U`` is kept in full.

Storage is preallocated and grows by doubling (no quadratic ``torch.cat``); ``Q^U`` of SWL lives in a buffer of
``2 W`` rows compacted every ``W`` steps (O(D) amortised per step). ``memory_bytes`` counts the allocated buffers.

Gradients: meant for inference (``torch.no_grad()``). When an input requires grad the cache switches to the
functional, out-of-place :func:`attnlab.ops.castle.decode.castle_decode_step` so that autograd stays correct.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab._validation import check_int, resolve_device_dtype
from attnlab.cache.base import AttentionCache
from attnlab.ops.castle.api import CastleImpl, _resolve_scale, validate_inputs, validate_lookahead
from attnlab.ops.castle.decode import (
    CastleState,
    castle_decode_step,
    castle_prefill,
    decode_attend,
    empty_state,
    lookahead_update,
)

__all__ = ["UQKVCache"]

_MIN_CAPACITY = 16


class UQKVCache(AttentionCache):
    """Decoding state of one CASTLE layer: ``(U^t, Q^U, K^C, V^C)`` for ``B`` sequences and ``H`` heads.

    Args:
        batch_size, n_heads, head_dim: shape of what it holds, ``(B, H, t, D)``.
        lookahead: the layer's CASTLE-SWL ``W`` (the paper's W: the lookahead key of token ``s`` summarises
            ``x_{s+1..s+W}``, the current token not counted; ``None`` for full CASTLE); it decides which rows of
            ``Q^U`` and ``U`` a new token updates, so it must equal the ``lookahead`` of the layer using the cache.
        device, dtype: where and how tensors are stored; must match the layer.
        capacity: positions allocated at the first write (then doubled as needed).
    """

    def __init__(self, batch_size: int, n_heads: int, head_dim: int, *, lookahead: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 capacity: int = _MIN_CAPACITY) -> None:
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.n_heads = check_int("n_heads", n_heads, 1)
        self.head_dim = check_int("head_dim", head_dim, 1)
        self.lookahead = validate_lookahead(lookahead)
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self._initial_capacity = check_int("capacity", capacity, 1)
        self.reset()

    # ---- AttentionCache -------------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        return self._seq_len

    def memory_bytes(self) -> int:
        if self._state is not None:
            return self._nbytes(*self._state)
        return self._nbytes(self._u, self._qu, self._kc, self._vc)

    def reset(self) -> None:
        """Forget everything (buffers are dropped); the next token is position 0 again."""
        self._seq_len = 0
        self._u: Tensor | None = None  # (B, H, capacity, D)
        self._kc: Tensor | None = None  # (B, H, capacity, D)
        self._vc: Tensor | None = None  # (B, H, capacity, D)
        self._qu: Tensor | None = None  # (B, H, capacity or 2W, D)
        self._qu_start = 0  # live rows of Q^U: [_qu_start, _qu_start + _qu_len)
        self._qu_len = 0
        self._state: CastleState | None = None  # set when the autograd-safe functional path is in use

    # ---- views ---------------------------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Positions allocated for ``U``, ``K^C`` and ``V^C``."""
        return 0 if self._u is None else int(self._u.shape[2])

    def state(self) -> CastleState:
        """The cached ``(U^t, Q^U rows, K^C, V^C)`` as a :class:`CastleState` (views, valid until the next write)."""
        if self._state is not None:
            return self._state
        if self._u is None:
            return empty_state(self.batch_size, self.n_heads, self.head_dim, device=self.device, dtype=self.dtype)
        t = self._seq_len
        assert self._qu is not None and self._kc is not None and self._vc is not None
        qu = self._qu[:, :, self._qu_start : self._qu_start + self._qu_len]
        return CastleState(self._u[:, :, :t], qu, self._kc[:, :, :t], self._vc[:, :, :t])

    # ---- writes ---------------------------------------------------------------------------------------------
    def extend(self, q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor, *,
               scale: float | None = None, impl: CastleImpl = "auto", chunk_size: int = 64) -> Tensor:
        """Consume ``T`` new tokens (six ``(B, H, T, D)`` projections, already position-encoded); return ``(B, H, T, D)``.

        An empty cache is prefilled in one pass (Algorithm 4, with ``impl``); otherwise tokens are decoded one at
        a time (Algorithm 5). ``chunk_size`` is the chunked form's (used by the prefill only).
        """
        self._check(q_u, k_u, v_u, q_c, k_c, v_c)
        if self._seq_len == 0 and q_u.shape[2] > 1:
            return self.prefill(q_u, k_u, v_u, q_c, k_c, v_c, scale=scale, impl=impl, chunk_size=chunk_size)
        outs = [self.step(*(x[:, :, i : i + 1] for x in (q_u, k_u, v_u, q_c, k_c, v_c)), scale=scale)
                for i in range(q_u.shape[2])]
        return torch.cat(outs, dim=2)

    def prefill(self, q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor, *,
                scale: float | None = None, impl: CastleImpl = "auto", chunk_size: int = 64) -> Tensor:
        """Algorithm 4 on an empty cache: outputs ``(B, H, T, D)``; stores ``U^T``, ``Q^U``, ``K^C``, ``V^C``."""
        self._check(q_u, k_u, v_u, q_c, k_c, v_c)
        if self._seq_len:
            raise ValueError(f"prefill needs an empty cache, but seq_len={self._seq_len}; use extend() or step()")
        out, st = castle_prefill(q_u, k_u, v_u, q_c, k_c, v_c, lookahead=self.lookahead, scale=scale,
                                 impl=impl, chunk_size=chunk_size)
        T = q_u.shape[2]
        if any(x.requires_grad for x in st):
            self._state = st
        else:
            self._grow(T)
            assert self._u is not None and self._kc is not None and self._vc is not None
            self._u[:, :, :T].copy_(st.u)
            self._kc[:, :, :T].copy_(st.k_c)
            self._vc[:, :, :T].copy_(st.v_c)
            self._append_qu(st.q_u)
        self._seq_len = T
        return out

    def step(self, q_u: Tensor, k_u: Tensor, v_u: Tensor, q_c: Tensor, k_c: Tensor, v_c: Tensor, *,
             scale: float | None = None) -> Tensor:
        """Algorithm 5 for one token (six ``(B, H, 1, D)``): rank-1 update of ``U`` in place, output ``(B, H, 1, D)``."""
        self._check(q_u, k_u, v_u, q_c, k_c, v_c)
        if q_u.shape[2] != 1:
            raise ValueError(f"step takes one token: q_u must have shape (B, H, 1, D), got {tuple(q_u.shape)}")
        xs = (q_u, k_u, v_u, q_c, k_c, v_c)
        if self._state is not None or any(x.requires_grad for x in xs):
            # autograd-safe functional path (out of place)
            state = self.state()
            if self._state is None:
                state = CastleState(*(x.clone() for x in state))
            out, self._state = castle_decode_step(*xs, state, lookahead=self.lookahead, scale=scale)
            self._u = self._qu = self._kc = self._vc = None
            self._seq_len += 1
            return out
        scale = _resolve_scale(scale, self.head_dim)
        t = self._seq_len
        self._grow(t + 1)
        assert self._u is not None and self._kc is not None and self._vc is not None and self._qu is not None
        r = self._qu_len
        if r:
            qu_rows = self._qu[:, :, self._qu_start : self._qu_start + r]  # (B, H, r, D): positions t-r .. t-1
            self._u[:, :, t - r : t] += lookahead_update(qu_rows, k_u, v_u, scale)  # eq. (13)
        self._u[:, :, t].zero_()  # u_t = 0
        self._kc[:, :, t : t + 1].copy_(k_c)
        self._vc[:, :, t : t + 1].copy_(v_c)
        self._append_qu(q_u)
        self._seq_len = t + 1
        return decode_attend(q_c, self._kc[:, :, : t + 1], self._u[:, :, : t + 1], self._vc[:, :, : t + 1], scale)

    # ---- internals ------------------------------------------------------------------------------------------
    def _check(self, *xs: Tensor) -> None:
        validate_inputs(*xs)
        B, H, _, D = xs[0].shape
        if (B, H, D) != (self.batch_size, self.n_heads, self.head_dim):
            raise ValueError(f"cache holds (batch_size, n_heads, head_dim)={(self.batch_size, self.n_heads, self.head_dim)}"
                             f", but the input has {(B, H, D)}")
        if xs[0].dtype != self.dtype:
            raise ValueError(f"cache dtype is {self.dtype}, but the input has dtype {xs[0].dtype}")
        if xs[0].device.type != self.device.type:
            raise ValueError(f"cache device is {self.device}, but the input is on {xs[0].device}")

    def _new(self, rows: int) -> Tensor:
        return torch.empty(self.batch_size, self.n_heads, rows, self.head_dim, device=self.device, dtype=self.dtype)

    def _grow(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        cap = max(self.capacity, self._initial_capacity)
        while cap < needed:
            cap *= 2
        t = self._seq_len
        bufs = []
        for old in (self._u, self._kc, self._vc):
            new = self._new(cap)
            if old is not None and t:
                new[:, :, :t].copy_(old[:, :, :t])
            bufs.append(new)
        self._u, self._kc, self._vc = bufs
        if self.lookahead is None:  # Q^U grows with the sequence
            new = self._new(cap)
            if self._qu is not None and self._qu_len:
                new[:, :, : self._qu_len].copy_(self._qu[:, :, self._qu_start : self._qu_start + self._qu_len])
            self._qu, self._qu_start = new, 0
        elif self._qu is None:  # SWL: a fixed buffer of 2W rows
            self._qu = self._new(2 * self.lookahead)

    def _append_qu(self, rows: Tensor) -> None:
        """Append rows of ``Q^U`` ``(B, H, n, D)``, keeping only the rows later tokens can still update."""
        assert self._qu is not None
        n = rows.shape[2]
        if self.lookahead is not None:
            W = self.lookahead
            rows = rows[:, :, max(0, n - W) :]
            n = rows.shape[2]
            if n == 0:
                return
            if self._qu_start + self._qu_len + n > self._qu.shape[2]:  # compact: keep the last W - n live rows
                keep = min(self._qu_len, W - n)
                live = self._qu[:, :, self._qu_start + self._qu_len - keep : self._qu_start + self._qu_len].clone()
                self._qu[:, :, :keep].copy_(live)
                self._qu_start, self._qu_len = 0, keep
        end = self._qu_start + self._qu_len
        self._qu[:, :, end : end + n].copy_(rows)
        self._qu_len += n
        if self.lookahead is not None and self._qu_len > self.lookahead:
            self._qu_start += self._qu_len - self.lookahead
            self._qu_len = self.lookahead

    def __repr__(self) -> str:
        return (f"UQKVCache(batch_size={self.batch_size}, n_heads={self.n_heads}, head_dim={self.head_dim}, "
                f"lookahead={self.lookahead}, seq_len={self.seq_len}, capacity={self.capacity})")
