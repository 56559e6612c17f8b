"""Key/value caches for softmax attention: a growing :class:`KVCache` and a bounded :class:`SlidingKVCache`.

Shape legend: B batch, H_kv key/value heads, S cached positions, T new positions, D key head dim, Dv value head dim.

Both caches share one protocol used by the attention layers::

    q_offset = cache.seq_len                 # absolute position of the first new query
    k_all, v_all, kv_start = cache.update(k_new, v_new)
    # attend from the new queries to k_all/v_all; key column j has absolute position kv_start + j

``update`` stores the new keys/values and advances ``seq_len`` by ``T``. ``KVCache`` always returns every key
(``kv_start == 0``). ``SlidingKVCache(window)`` returns only the keys a causal window of that size can still
see (``kv_start > 0`` once more than ``window`` positions have passed), and afterwards keeps only the last
``window`` of them, so its memory is bounded by ``window`` whatever the sequence length. Layers turn
``kv_start`` into a mask on absolute positions with :func:`shifted_mask`.

Gradients: the caches are meant for inference (``torch.no_grad()``). When the new keys require grad, the
caches fall back to out-of-place concatenation so that autograd stays correct, at quadratic copying cost.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab._validation import check_int, resolve_device_dtype
from attnlab.cache.base import AttentionCache
from attnlab.masks import Mask

__all__ = ["KVCache", "SlidingKVCache", "shifted_mask"]

_MIN_CAPACITY = 16


class _KVBase(AttentionCache):
    """Shared validation and bookkeeping of the two key/value caches."""

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        v_head_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.n_kv_heads = check_int("n_kv_heads", n_kv_heads, 1)
        self.head_dim = check_int("head_dim", head_dim, 1)
        self.v_head_dim = self.head_dim if v_head_dim is None else check_int("v_head_dim", v_head_dim, 1)
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self._seq_len = 0
        # stored positions S_s: KVCache's capacity, SlidingKVCache's kept (<= window)
        self._k: Tensor | None = None  # (B, H_kv, S_s, D)
        self._v: Tensor | None = None  # (B, H_kv, S_s, Dv)

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def check_compatible(self, *, batch_size: int, n_kv_heads: int, head_dim: int, v_head_dim: int,
                         dtype: torch.dtype, device: torch.device) -> None:
        """Raise ``ValueError`` if keys/values of this description cannot go into this cache."""
        want = (self.batch_size, self.n_kv_heads, self.head_dim, self.v_head_dim)
        got = (batch_size, n_kv_heads, head_dim, v_head_dim)
        if want != got:
            raise ValueError(
                f"cache holds (batch_size, n_kv_heads, head_dim, v_head_dim)={want}, "
                f"but the input needs {got}; create it with layer.new_cache(batch_size={batch_size})"
            )
        if dtype != self.dtype:
            raise ValueError(f"cache dtype is {self.dtype}, but the layer computes in {dtype}")
        if not _same_device(device, self.device):
            raise ValueError(f"cache device is {self.device}, but the layer runs on {device}")

    def _check_update(self, k: Tensor, v: Tensor) -> int:
        if not isinstance(k, Tensor) or not isinstance(v, Tensor):
            raise ValueError(f"k and v must be tensors, got {type(k).__name__} and {type(v).__name__}")
        B, H, D, Dv = self.batch_size, self.n_kv_heads, self.head_dim, self.v_head_dim
        if k.ndim != 4 or tuple(k.shape[:2]) != (B, H) or k.shape[3] != D:
            raise ValueError(f"k must have shape (B, H_kv, T, D) = ({B}, {H}, T, {D}), got {tuple(k.shape)}")
        T = k.shape[2]
        if v.ndim != 4 or tuple(v.shape) != (B, H, T, Dv):
            raise ValueError(f"v must have shape (B, H_kv, T, Dv) = ({B}, {H}, {T}, {Dv}), got {tuple(v.shape)}")
        if k.dtype != self.dtype or v.dtype != self.dtype:
            raise ValueError(f"k and v must have the cache dtype {self.dtype}, got {k.dtype} and {v.dtype}")
        if not _same_device(k.device, self.device):
            raise ValueError(f"k and v must be on the cache device {self.device}, got {k.device}")
        return T

    def _empty_keys_values(self) -> tuple[Tensor, Tensor]:
        """Zero-length keys and values, ``(B, H_kv, 0, D)`` and ``(B, H_kv, 0, Dv)``, before the first update."""
        B, H = self.batch_size, self.n_kv_heads
        return (torch.empty(B, H, 0, self.head_dim, device=self.device, dtype=self.dtype),
                torch.empty(B, H, 0, self.v_head_dim, device=self.device, dtype=self.dtype))

    def memory_bytes(self) -> int:
        return self._nbytes(self._k, self._v)


def _same_device(a: torch.device, b: torch.device) -> bool:
    if a.type != b.type:
        return False
    # "cuda" and "cuda:0" name the same device when the index is the current one
    if a.index is None or b.index is None:
        return True
    return a.index == b.index


class KVCache(_KVBase):
    """A growing key/value cache: keeps every position seen.

    Storage is preallocated and grows by doubling its capacity, so appending ``N`` tokens one at a time copies
    ``O(N)`` elements in total (not ``O(N^2)`` as repeated ``torch.cat`` would). ``update`` returns views of the
    filled part, ``(B, H_kv, seq_len, D)``, valid until the next ``update``.

    Args:
        batch_size, n_kv_heads, head_dim: the shape of the keys it will hold, ``(B, H_kv, S, D)``.
        v_head_dim: value head dim (defaults to ``head_dim``).
        device, dtype: where and how the keys are stored; must match the layer.
        capacity: initial number of positions to allocate (allocation is lazy: nothing until the first update).
    """

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        v_head_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        capacity: int = _MIN_CAPACITY,
    ) -> None:
        super().__init__(batch_size, n_kv_heads, head_dim, v_head_dim=v_head_dim, device=device, dtype=dtype)
        self._initial_capacity = check_int("capacity", capacity, 1)

    @property
    def capacity(self) -> int:
        """Positions allocated (``>= seq_len``)."""
        return 0 if self._k is None else int(self._k.shape[2])

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, int]:
        """Append ``k`` ``(B, H_kv, T, D)`` and ``v`` ``(B, H_kv, T, Dv)``; return all keys, values and ``0``."""
        T = self._check_update(k, v)
        n, m = self._seq_len, self._seq_len + T
        if k.requires_grad or v.requires_grad:
            # autograd-safe path: never write in place into a tensor an earlier graph may have saved
            if self._k is None:
                self._k, self._v = k, v
            else:
                self._k = torch.cat([self._k[:, :, :n], k], dim=2)  # (B, H_kv, m, D)
                self._v = torch.cat([self._v[:, :, :n], v], dim=2)  # (B, H_kv, m, Dv)
        else:
            if m > self.capacity:
                self._grow(m)
            assert self._k is not None and self._v is not None
            self._k[:, :, n:m].copy_(k)
            self._v[:, :, n:m].copy_(v)
        self._seq_len = m
        assert self._k is not None and self._v is not None
        return self._k[:, :, :m], self._v[:, :, :m], 0

    def _grow(self, needed: int) -> None:
        cap = max(self.capacity, self._initial_capacity)
        while cap < needed:
            cap *= 2
        B, H, D, Dv = self.batch_size, self.n_kv_heads, self.head_dim, self.v_head_dim
        k = torch.empty(B, H, cap, D, device=self.device, dtype=self.dtype)
        v = torch.empty(B, H, cap, Dv, device=self.device, dtype=self.dtype)
        if self._k is not None and self._v is not None and self._seq_len:
            k[:, :, : self._seq_len].copy_(self._k[:, :, : self._seq_len])
            v[:, :, : self._seq_len].copy_(self._v[:, :, : self._seq_len])
        self._k, self._v = k, v

    def keys_values(self) -> tuple[Tensor, Tensor]:
        """The cached keys and values, ``(B, H_kv, seq_len, D)`` and ``(B, H_kv, seq_len, Dv)``."""
        if self._k is None or self._v is None:
            return self._empty_keys_values()
        return self._k[:, :, : self._seq_len], self._v[:, :, : self._seq_len]

    def reset(self) -> None:
        """Forget every position; the allocated storage is kept for reuse."""
        self._seq_len = 0
        if self._k is not None and self._k.requires_grad:
            self._k = self._v = None

    def __repr__(self) -> str:
        return (f"KVCache(batch_size={self.batch_size}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"seq_len={self.seq_len}, capacity={self.capacity})")


class SlidingKVCache(_KVBase):
    """A key/value cache that keeps only the last ``window`` positions.

    For a causal mask whose visible keys always lie in ``(q_idx - window, q_idx]`` (``Mask.window``), keys older
    than the last ``window`` positions can never be seen again. ``update`` therefore returns the kept keys that
    the new queries may still see (at most the last ``window - 1`` old ones) followed by the new ones, together
    with the absolute position ``kv_start`` of the first returned key, and then keeps the last ``window``
    positions. Memory is ``window`` positions (plus a transient ``window - 1 + T`` during an update); each
    decoding step copies ``O(window)`` elements.

    Args:
        window: positions kept, ``>= 1``; must be at least the layer mask's ``window``.
        batch_size, n_kv_heads, head_dim, v_head_dim, device, dtype: as for :class:`KVCache`.
    """

    def __init__(
        self,
        window: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        v_head_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(batch_size, n_kv_heads, head_dim, v_head_dim=v_head_dim, device=device, dtype=dtype)
        self.window = check_int("window", window, 1)

    @property
    def kept(self) -> int:
        """Positions currently held (``min(seq_len, window)``)."""
        return 0 if self._k is None else int(self._k.shape[2])

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, int]:
        """Add ``k``/``v`` ``(B, H_kv, T, *)``; return visible keys, values and the first one's absolute position."""
        T = self._check_update(k, v)
        old = min(self.kept, self.window - 1)  # older keys the first new query can still see
        start = self._seq_len - old
        if old and self._k is not None and self._v is not None:
            k_all = torch.cat([self._k[:, :, self.kept - old:], k], dim=2)  # (B, H_kv, old + T, D)
            v_all = torch.cat([self._v[:, :, self.kept - old:], v], dim=2)  # (B, H_kv, old + T, Dv)
        else:
            k_all, v_all = k, v
        keep = min(self.window, old + T)
        # clone: a slice would keep the whole (old + T) tensor alive and defeat the memory bound
        self._k = k_all[:, :, -keep:].clone()
        self._v = v_all[:, :, -keep:].clone()
        self._seq_len += T
        return k_all, v_all, start

    def keys_values(self) -> tuple[Tensor, Tensor]:
        """The kept keys and values, the last ``min(seq_len, window)`` positions."""
        if self._k is None or self._v is None:
            return self._empty_keys_values()
        return self._k, self._v

    def reset(self) -> None:
        self._seq_len = 0
        self._k = self._v = None

    def __repr__(self) -> str:
        return (f"SlidingKVCache(window={self.window}, batch_size={self.batch_size}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, seq_len={self.seq_len}, kept={self.kept})")


def shifted_mask(mask: Mask, kv_start: int) -> Mask:
    """``mask`` for a key tensor whose column ``j`` holds absolute position ``kv_start + j``.

    The softmax op evaluates a mask at ``kv_idx = j``; this wrapper evaluates ``mask`` at ``kv_start + j`` so
    that a sliding cache's kept keys are masked by their true positions. ``kv_start == 0`` returns ``mask``.
    The result is never ``plain_causal`` (SDPA's ``is_causal`` assumes aligned positions) and carries no
    ``window`` (its bound is stated on unshifted indices).
    """
    if kv_start == 0:
        return mask
    if kv_start < 0:
        raise ValueError(f"kv_start must be >= 0, got {kv_start}")
    fn = mask.fn

    def shifted(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return fn(b, h, q, kv + kv_start)

    return Mask(
        name=f"shift({mask.name}, kv_start={kv_start})",
        fn=shifted,
        causal=mask.causal,
        full=mask.full,
        max_len=mask.max_len,
        per_batch=mask.per_batch,
        per_head=mask.per_head,
    )
