"""Recurrent-state cache for linear attention: constant memory, whatever the sequence length.

Shape legend: B batch, H query heads, F feature dim of the feature map, Dv value head dim.

The cache holds the :class:`~attnlab.ops.linear.LinearState` ``(kv (B, H, F, Dv), z (B, H, F))`` after every
token consumed so far, and ``seq_len``, the number of those tokens. A layer uses it as::

    out, state = linear_attention(q, k, v, initial_state=cache.state, ...)
    cache.update(state, n_tokens=T)

so prefill of any length followed by one token at a time equals running the whole sequence at once.
The state starts at zeros (identical, in exact arithmetic and in floating point, to "no state").

Gradients: ``update`` stores the state as given, so a state that requires grad keeps its graph (truncated
back-propagation through time); call :meth:`detach_` between segments to cut it. For generation, run under
``torch.no_grad()``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab._validation import check_int, resolve_device_dtype
from attnlab.cache.base import AttentionCache
from attnlab.ops.linear.api import LinearState

__all__ = ["RecurrentStateCache"]


class RecurrentStateCache(AttentionCache):
    """The linear-attention state of one layer for a batch of sequences.

    Args:
        batch_size: ``B``.
        n_heads: ``H``, query heads (the state is kept per query head).
        feature_dim: ``F`` (``attnlab.ops.linear.feature_dim(feature_map, qk_head_dim)``).
        value_dim: ``Dv``.
        device, dtype: of the state; default CPU and the default dtype.
    """

    def __init__(
        self,
        batch_size: int,
        n_heads: int,
        feature_dim: int,
        value_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.n_heads = check_int("n_heads", n_heads, 1)
        self.feature_dim = check_int("feature_dim", feature_dim, 1)
        self.value_dim = check_int("value_dim", value_dim, 1)
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self._seq_len = 0
        self._kv = torch.zeros(self.batch_size, self.n_heads, self.feature_dim, self.value_dim,
                               device=self.device, dtype=self.dtype)  # (B, H, F, Dv)
        self._z = torch.zeros(self.batch_size, self.n_heads, self.feature_dim,
                              device=self.device, dtype=self.dtype)  # (B, H, F)

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def state(self) -> LinearState:
        """The state after the ``seq_len`` tokens consumed so far."""
        return LinearState(self._kv, self._z)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(B, H, F, Dv)``."""
        return (self.batch_size, self.n_heads, self.feature_dim, self.value_dim)

    def memory_bytes(self) -> int:
        return self._nbytes(self._kv, self._z)

    def reset(self) -> None:
        self._kv = torch.zeros_like(self._kv)
        self._z = torch.zeros_like(self._z)
        self._seq_len = 0

    def update(self, state: LinearState | tuple[Tensor, Tensor], n_tokens: int) -> None:
        """Replace the state by ``state`` (the state after ``n_tokens`` more tokens) and advance ``seq_len``."""
        check_int("n_tokens", n_tokens, 1)
        if not (isinstance(state, tuple) and len(state) == 2):
            raise ValueError(f"state must be a LinearState(kv, z), got {type(state).__name__}")
        kv, z = state
        for name, t, want in (("state.kv", kv, self.shape), ("state.z", z, self.shape[:3])):
            if not isinstance(t, Tensor) or tuple(t.shape) != want:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"{name} must have shape {want}, got {got}")
            if t.dtype != self.dtype:
                raise ValueError(f"{name}.dtype must be the cache dtype {self.dtype}, got {t.dtype}")
            if t.device.type != self.device.type:
                raise ValueError(f"{name}.device must be the cache device {self.device}, got {t.device}")
        self._kv, self._z = kv, z
        self._seq_len += n_tokens

    def detach_(self) -> "RecurrentStateCache":
        """Cut the autograd graph behind the state (truncated BPTT); returns ``self``."""
        self._kv = self._kv.detach()
        self._z = self._z.detach()
        return self

    def __repr__(self) -> str:
        return (f"RecurrentStateCache(batch_size={self.batch_size}, n_heads={self.n_heads}, "
                f"feature_dim={self.feature_dim}, value_dim={self.value_dim}, seq_len={self.seq_len}, "
                f"dtype={self.dtype}, device={self.device})")
