"""Decoding state of the encoder-decoder: one self-attention cache per decoder layer, plus the source's
cross-attention keys and values, projected once.

Shape legend: B rows (sentences, or sentences x beams), S source length, C ``d_model``, H_kv key/value heads of the
cross-attention, D head dim.

:class:`EncDecCache` is made by :meth:`EncoderDecoder.new_caches(memory, src_pad_mask)
<attnlab.models.encdec.EncoderDecoder.new_caches>`: every cross-attention layer projects the encoder output into
keys and values there (:meth:`~attnlab.layers.mha.MultiHeadAttention.project_context`), once per source; each
decoding step then reuses them. Beam search reorders and prunes rows with :meth:`EncDecCache.select_rows_`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnlab.cache import AttentionCache
from attnlab.masks import Mask, key_padding

__all__ = ["EncDecCache", "select_cache_rows_"]


class EncDecCache:
    """Per-layer decoder self-attention caches and cross-attention ``(k, v)`` for a batch of ``B`` rows.

    Attributes:
        self_caches: one :class:`~attnlab.cache.AttentionCache` per decoder layer (each mechanism's own kind).
        cross_kv: per decoder layer, the source's keys and values, each ``(B, H_kv, S, D)``.
        src_pad_mask: ``(B, S)`` bool, ``True`` at padded source positions, or ``None`` (no padding).
        memory: the encoder output ``(B, S, C)`` the keys and values were projected from.
    """

    def __init__(self, *, self_caches: list[AttentionCache], cross_kv: list[tuple[Tensor, Tensor]],
                 src_pad_mask: Tensor | None, memory: Tensor) -> None:
        self.self_caches = list(self_caches)
        self.cross_kv = list(cross_kv)
        self.src_pad_mask = src_pad_mask
        self.memory = memory
        self.cross_mask: Mask | None = None if src_pad_mask is None else key_padding(~src_pad_mask)

    @property
    def batch_size(self) -> int:
        return int(self.memory.shape[0])

    @property
    def seq_len(self) -> int:
        """Target positions consumed so far (every layer's cache agrees; checked)."""
        lens = {c.seq_len for c in self.self_caches}
        if len(lens) != 1:
            raise ValueError(f"the decoder layers' caches disagree on seq_len ({sorted(lens)}); use one new_caches() "
                             "per sequence")
        return lens.pop()

    def memory_bytes(self) -> int:
        """Bytes held: self-attention caches plus the cross-attention keys and values."""
        return sum(c.memory_bytes() for c in self.self_caches) + sum(
            k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.cross_kv)

    @torch.no_grad()
    def select_rows_(self, index: Tensor) -> EncDecCache:
        """Keep rows ``index`` ``(B',)`` (long, any order, repeats allowed), in place: row ``i`` of the result is old
        row ``index[i]``. Beam search uses it to follow the surviving beams and drop finished sentences."""
        if not isinstance(index, Tensor) or index.dtype != torch.long or index.ndim != 1 or index.numel() < 1:
            got = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, Tensor) else type(index).__name__
            raise ValueError(f"index must be a non-empty 1-d torch.long tensor of row numbers, got {got}")
        index = index.to(self.memory.device)
        for c in self.self_caches:
            select_cache_rows_(c, index)
        self.cross_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cross_kv]
        self.memory = self.memory.index_select(0, index)
        if self.src_pad_mask is not None:
            self.src_pad_mask = self.src_pad_mask.index_select(0, index)
            self.cross_mask = key_padding(~self.src_pad_mask)
        return self

    def __repr__(self) -> str:
        return (f"EncDecCache(batch_size={self.batch_size}, source_len={self.memory.shape[1]}, "
                f"layers={len(self.self_caches)}, seq_len={self.seq_len})")


def select_cache_rows_(cache: AttentionCache, index: Tensor) -> AttentionCache:
    """Keep batch rows ``index`` of any decoding cache, in place, and set its ``batch_size`` to ``len(index)``.

    :class:`~attnlab.cache.AttentionCache` has no row-selection method, so this relies on one property that every
    attnlab cache has (and that the beam-search tests check for each of them, cached against recomputed): its state
    is held in tensor attributes (or tuples of tensors) whose first dim is the batch, next to an int ``batch_size``.
    Every such tensor is replaced by its ``index_select(0, index)``; everything else (positions, capacities) is
    shared by all rows and left alone.
    """
    B = getattr(cache, "batch_size", None)
    if isinstance(B, bool) or not isinstance(B, int):
        raise ValueError(f"cannot select rows of {type(cache).__name__}: it has no int batch_size attribute")

    def pick(value: Any) -> Any:
        if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == B:
            return value.index_select(0, index)
        if isinstance(value, tuple) and value and all(isinstance(t, Tensor) for t in value):
            picked = [pick(t) for t in value]
            return type(value)(*picked) if hasattr(value, "_fields") else tuple(picked)
        return value

    for name, value in list(vars(cache).items()):
        new = pick(value)
        if new is not value:
            setattr(cache, name, new)
    cache.batch_size = int(index.numel())  # type: ignore[attr-defined]
    return cache
