"""Rotary position embedding (RoPE, Su et al. 2021), shared by every layer that uses it.

Shapes: x is ``(B, H, T, D)`` with ``D`` even (or ``(B, T, H, D)`` with ``seq_dim=-3``). Positions are absolute: in
cached decoding the new tokens start at ``offset = cache.seq_len``. The rotation pairs dimension ``i`` with
``i + D/2`` (the "rotate half" layout).

Speed: the angles are computed in float64 and rounded once to the input's dtype; :func:`rope_tables` keeps them per
``(dim, base, device, dtype)`` and slices positions ``offset .. offset + T - 1`` out of the cached table instead of
rebuilding them at every call (an entry grows, by doubling, when a later position is asked for). The values are
exactly those :func:`rope_angles` gives for the same positions, since every angle is computed elementwise from
its own position. Under ``torch.compile`` :func:`rope_tables` reaches the cache through an opaque op
(``attnlab::rope_tables``): computed inline, the angles would be fused into, and recomputed per element by, every
kernel that reads them.

Adjacent pairs: a layer whose queries and keys only meet in dot products ``q . k`` may instead lay each head out
with the pairs side by side, dimension ``i`` at ``2i`` and ``i + D/2`` at ``2i + 1`` (:func:`pair_rows`: the order
in which to take its projection's rows). ``q . k`` is unchanged when q and k permute their dimensions alike, and
in that layout the rotation is one complex multiplication (:func:`rotate_pairs` with :func:`rope_freqs`), forward
and backward, instead of the rotate-half formula's several passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rope_angles", "rope_tables", "apply_rope", "rotate", "clear_rope_cache", "pair_rows", "rope_freqs",
           "rotate_pairs"]


def rope_angles(positions: Tensor, dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` of shape ``(T, dim)`` for integer ``positions`` of shape ``(T,)``, in float64."""
    if dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got head_dim={dim}")
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float64) / dim))
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, dim/2)
    ang = torch.cat([ang, ang], dim=-1)  # (T, dim)
    return ang.cos(), ang.sin()


def _tables(start: int, end: int, dim: int, base: float, device: torch.device,
            dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``cos`` and the signed ``sin`` (first half negated) of positions ``start .. end - 1``, ``(end - start, dim)``."""
    cos, sin = rope_angles(torch.arange(start, end, device=device), dim, base)
    sin = torch.cat([-sin[:, : dim // 2], sin[:, dim // 2 :]], dim=-1)  # (T, dim): [-sin | sin]
    return cos.to(dtype), sin.to(dtype)


# (dim, base, device, dtype) -> (cos, signed sin), each (L, dim), or (cos + i sin,) (L, dim/2) complex for a
# complex dtype; rows are positions 0 .. L - 1
_CACHE: dict[tuple[int, float, torch.device, torch.dtype], tuple[Tensor, ...]] = {}


def clear_rope_cache() -> None:
    """Forget every cached table (they are rebuilt on demand)."""
    _CACHE.clear()


def rope_tables(offset: int, T: int, dim: int, base: float = 10000.0, *, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """``cos`` and the signed ``sin`` (``[-sin_1 | sin_2]``, the first ``dim/2`` columns negated), each ``(T, dim)``,
    of positions ``offset .. offset + T - 1`` in ``dtype``, from the cache (see the module docstring).

    ``x * cos + roll(x, dim/2) * sin`` is then the rotation (:func:`rotate`). The tensors are shared by every
    caller: do not modify them in place.
    """
    if torch.compiler.is_compiling():
        # Computed inline, Inductor would fuse the float64 angles into every kernel that reads them and evaluate
        # pow/cos/sin once per element of x (several times slower); an opaque op hands it the cached tables.
        if dim % 2:
            raise ValueError(f"RoPE needs an even head dim, got head_dim={dim}")
        device = torch.device("cpu") if device is None else torch.device(device)
        cos, sin = torch.ops.attnlab.rope_tables(offset, T, dim, float(base), device, dtype)
        return cos, sin
    cos, sin = _cached(offset, T, dim, base, device, dtype, _tables)
    return cos, sin


@torch.library.custom_op("attnlab::rope_tables", mutates_args=())
def _rope_tables_op(offset: int, T: int, dim: int, base: float, device: torch.device,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """:func:`rope_tables` as an op that ``torch.compile`` does not trace into (copies: an op may not return
    tensors it keeps)."""
    cos, sin = _cached(offset, T, dim, base, device, dtype, _tables)
    return cos.clone(), sin.clone()


@_rope_tables_op.register_fake
def _(offset: int, T: int, dim: int, base: float, device: torch.device,
      dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return torch.empty(T, dim, device=device, dtype=dtype), torch.empty(T, dim, device=device, dtype=dtype)


def _cached(offset: int, T: int, dim: int, base: float, device: torch.device | str | None, dtype: torch.dtype,
            make) -> tuple[Tensor, ...]:
    """Rows ``offset .. offset + T - 1`` of the cached tables ``make(0, L, dim, base, device, dtype)``; computed
    inline under ``torch.compile``."""
    if dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got head_dim={dim}")
    device = torch.device("cpu") if device is None else torch.device(device)
    end = offset + T
    if torch.compiler.is_compiling():
        return make(offset, end, dim, base, device, dtype)
    key = (dim, float(base), device, dtype)
    hit = _CACHE.get(key)
    if hit is None or hit[0].shape[0] < end:
        n = max(end, 64 if hit is None else 2 * hit[0].shape[0])
        # plain tensors even when first asked for under inference_mode or no_grad (they are saved for backward)
        with torch.inference_mode(False), torch.no_grad():
            hit = make(0, n, dim, base, device, dtype)
        _CACHE[key] = hit
    return tuple(t[offset:end] for t in hit)


def _freqs(start: int, end: int, dim: int, base: float, device: torch.device,
           dtype: torch.dtype) -> tuple[Tensor]:
    cos, sin = rope_angles(torch.arange(start, end, device=device), dim, base)
    return (torch.complex(cos[:, : dim // 2], sin[:, : dim // 2]).to(dtype),)  # (T, dim/2)


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def rope_freqs(offset: int, T: int, dim: int, base: float = 10000.0, *, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """``cos + i sin`` of positions ``offset .. offset + T - 1``, ``(T, dim/2)``, complex with ``dtype``'s precision
    (``float32`` -> ``complex64``, ``float64`` -> ``complex128``); each part is :func:`rope_angles`' value rounded
    once. Cached like :func:`rope_tables`; do not modify in place."""
    if dtype not in _COMPLEX:
        raise ValueError(f"rope_freqs needs dtype float32 or float64, got {dtype}")
    return _cached(offset, T, dim, base, device, _COMPLEX[dtype], _freqs)[0]


def pair_rows(n_heads: int, head_dim: int) -> Tensor:
    """The order ``(n_heads * head_dim,)`` in which to take a projection's rows (``n_heads`` heads of
    ``head_dim``, head-major) so that each head's rotate-half pair ``(i, i + D/2)`` lands at ``(2i, 2i + 1)``."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got head_dim={head_dim}")
    return torch.arange(n_heads * head_dim).view(n_heads, 2, head_dim // 2).transpose(1, 2).reshape(-1)


def rotate_pairs(x: Tensor, freqs: Tensor) -> Tensor:
    """Rotate ``x`` ``(..., D)`` whose pairs are adjacent (``2i, 2i + 1``) by ``freqs`` (:func:`rope_freqs`,
    broadcasting against ``(..., D/2)``): one complex multiplication."""
    if x.stride(-1) != 1 or x.storage_offset() % 2 or any(s % 2 for s in x.stride()[:-1]):
        x = x.contiguous()  # view_as_complex needs (real, imag) pairs in memory
    z = torch.view_as_complex(x.unflatten(-1, (-1, 2))) * freqs  # (..., D/2) complex
    return torch.view_as_real(z).flatten(-2)  # (..., D)


class _Rotate(torch.autograd.Function):
    """``x * cos + roll(x, D/2) * sin_signed`` with a backward of three kernels (the transpose of the rotation)."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(cos, sin)
        half = x.shape[-1] // 2
        return x * cos + x.roll(half, -1) * sin

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        cos, sin = ctx.saved_tensors
        half = grad.shape[-1] // 2
        return grad * cos + (grad * sin).roll(-half, -1), None, None


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``(..., D)`` by tables from :func:`rope_tables` that broadcast against it.

    Gradients flow to ``x`` only (the tables are constants).
    """
    if (torch.compiler.is_compiling() or cos.requires_grad or sin.requires_grad
            or torch._C._are_functorch_transforms_active()):  # torch.func: plain operations it can transform
        return x * cos + x.roll(x.shape[-1] // 2, -1) * sin
    return _Rotate.apply(x, cos, sin)


def apply_rope(x: Tensor, offset: int = 0, base: float = 10000.0, *, seq_dim: int = -2) -> Tensor:
    """Rotate ``x`` by the angles of positions ``offset .. offset + T - 1``.

    ``x`` is ``(B, H, T, D)`` (``seq_dim=-2``, the default) or ``(B, T, H, D)`` (``seq_dim=-3``; e.g. the queries
    and keys straight out of a fused projection, before the heads are moved forward).
    """
    if seq_dim not in (-2, -3):
        raise ValueError(f"seq_dim must be -2 (x is (B, H, T, D)) or -3 (x is (B, T, H, D)), got {seq_dim}")
    T, D = x.shape[seq_dim], x.shape[-1]
    cos, sin = rope_tables(offset, T, D, base, device=x.device, dtype=x.dtype)  # (T, D)
    if seq_dim == -3:
        cos, sin = cos[:, None], sin[:, None]  # (T, 1, D)
    return rotate(x, cos, sin)
