"""The one decoding-cache interface shared by every attention layer.

A layer that supports cached decoding exposes ``new_cache(batch_size, *, device=None, dtype=None)``; its
``forward(x, cache=cache)`` consumes the new tokens ``x`` (prefill: many, decode: one) and updates the cache in
place. Generation code therefore treats every mechanism alike, whatever the cache holds (keys and values, a
sliding window of them, a recurrent state, or CASTLE's UQ-KV state).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class AttentionCache(ABC):
    """Per-layer decoding state."""

    @property
    @abstractmethod
    def seq_len(self) -> int:
        """Number of positions consumed so far: the absolute position of the next token."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Bytes held by the cache's tensors."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything; the next token is position 0 again."""

    @staticmethod
    def _nbytes(*tensors: torch.Tensor | None) -> int:
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)
