"""Public entry point: :func:`decayed_window_attention`, AutoHFormer's windowed causal attention with exponential
decay and relative sinusoidal keys (spec ``time_series.md`` C.3, C.6), with a choice of form.

Shape legend: B batch, H heads, T query length, S key length, D head dim, Dv value dim, R = lookback + 1.

Query row ``i`` is at absolute position ``q_offset + i``, key column ``j`` at ``kv_start + j``. Key ``j`` is visible
from query ``i`` iff ``0 <= i - j <= lookback``: the window **counts the current step**, so a row sees
``lookback + 1`` keys once far enough from the start (the paper's ``W`` is ``2 * lookback``). The window is the
mask :func:`attnlab.masks.sliding_window` ``(lookback + 1)``; the decay and the relative term are the score
modification :class:`~attnlab.ops.decayed.DecayScoreMod`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from attnlab.cache.kv import shifted_mask
from attnlab.masks import Mask, sliding_window
from attnlab.ops._checks import check_kv_like_q
from attnlab.ops.decayed.banded import banded_decayed_attention
from attnlab.ops.decayed.dense import dense_decayed_attention
from attnlab.ops.decayed.flex import flex_decayed_attention
from attnlab.ops.decayed.reference import reference_decayed_attention
from attnlab.ops.decayed.score_mod import DECAYS, Decay, DecayScoreMod
from attnlab.ops.decayed.sdpa import sdpa_decayed_attention

__all__ = ["decayed_window_attention", "resolve_impl", "DecayedImpl", "DECAYED_IMPLS", "window_mask"]

DecayedImpl = Literal["auto", "reference", "dense", "banded", "sdpa", "flex"]
DECAYED_IMPLS: tuple[str, ...] = ("auto", "reference", "dense", "banded", "sdpa", "flex")


def window_mask(lookback: int, *, kv_start: int = 0) -> Mask:
    """The window as an attnlab mask: ``sliding_window(lookback + 1)`` on absolute positions, keys shifted by
    ``kv_start`` (a sliding cache's first kept key)."""
    return shifted_mask(sliding_window(lookback + 1), kv_start)


def _check(q: object, k: object, v: object, lookback: object, decay: object, gamma: object, rel: object,
           scale: object, q_offset: object, kv_start: object, impl: object) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.ndim != 4 or not t.is_floating_point():
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a floating-point tensor (B, H, T or S, D), got {got}")
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    check_kv_like_q(q, k, v)
    B, H, T, D = q.shape
    if k.shape[:2] != (B, H) or k.shape[3] != D or v.shape[:3] != k.shape[:3]:
        raise ValueError(f"k must be (B={B}, H={H}, S, D={D}) and v (B, H, S, Dv), got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if isinstance(lookback, bool) or not isinstance(lookback, int) or lookback < 0:
        raise ValueError(f"lookback must be an int >= 0 (keys before the current step), got {lookback!r}")
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if isinstance(gamma, Tensor):
        if gamma.ndim != 0 or not gamma.is_floating_point():
            raise ValueError(f"gamma must be a 0-dim floating tensor or a float, got shape {tuple(gamma.shape)}")
        if bool(gamma.detach() < 0) or not bool(torch.isfinite(gamma.detach())):
            raise ValueError(f"gamma must be finite and >= 0, got {float(gamma)}")
    elif isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < math.inf:
        raise ValueError(f"gamma must be a finite float >= 0 or a 0-dim tensor, got {gamma!r}")
    if rel is not None:
        if not isinstance(rel, Tensor) or rel.ndim != 4 or tuple(rel.shape[:3]) != (B, H, T) or rel.shape[3] < 1:
            got = tuple(rel.shape) if isinstance(rel, Tensor) else type(rel).__name__
            raise ValueError(f"rel must be None or a tensor (B={B}, H={H}, T={T}, R >= 1), got {got}")
        if rel.dtype != q.dtype or rel.device != q.device:
            raise ValueError(f"rel must have q's dtype {q.dtype} and device {q.device}, got {rel.dtype} on {rel.device}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    for name, val in (("q_offset", q_offset), ("kv_start", kv_start)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 0:
            raise ValueError(f"{name} must be an int >= 0, got {val!r}")
    assert isinstance(q_offset, int) and isinstance(kv_start, int)
    if kv_start + k.shape[2] != q_offset + T:
        raise ValueError(f"the keys must end at the last query: kv_start + S = {kv_start} + {k.shape[2]} must equal "
                         f"q_offset + T = {q_offset} + {T}")
    if impl not in DECAYED_IMPLS:
        raise ValueError(f"impl must be one of {DECAYED_IMPLS}, got {impl!r}")
    if impl == "sdpa" and decay == "multiplicative":
        raise ValueError("impl='sdpa' supports decay='additive' or 'none' (an additive float mask), got "
                         "decay='multiplicative'; use impl='reference', 'dense', 'banded' or 'flex'")


def resolve_impl(impl: str, *, device_type: str, lookback: int, kv_len: int,
                 dtype: torch.dtype | None = None) -> str:
    """The form ``impl`` runs as: ``"auto"`` is ``"flex"`` on CUDA (except float64 ``dtype``: FlexAttention runs
    uncompiled then, and its uncompiled backward cannot differentiate ``gamma``); elsewhere
    ``"banded"``, or ``"dense"`` when the window covers half the ``kv_len`` keys or more (the band pays off only
    when it is narrow); any other ``impl`` is itself."""
    if impl != "auto":
        return impl
    if device_type == "cuda" and dtype != torch.float64:
        return "flex"
    return "dense" if 2 * (lookback + 1) >= kv_len else "banded"


def decayed_window_attention(q: Tensor, k: Tensor, v: Tensor, *, lookback: int, decay: Decay = "multiplicative",
                             gamma: Tensor | float = 0.5, rel: Tensor | None = None, scale: float | None = None,
                             q_offset: int = 0, kv_start: int = 0, impl: DecayedImpl = "auto") -> Tensor:
    """Windowed causal softmax attention with exponential decay and an optional relative term.

    Args:
        q: queries ``(B, H, T, D)``; k, v: keys ``(B, H, S, D)`` and values ``(B, H, S, Dv)`` ending at the last
            query (``kv_start + S == q_offset + T``).
        lookback: keys before the current step that a query sees (the paper's ``W / 2``).
        decay: ``"multiplicative"`` (``(s + rel) * exp(-gamma d)``, the paper), ``"additive"``
            (``s + rel - gamma d``) or ``"none"``; ``s = scale * q . k``, ``d`` the offset.
        gamma: the decay rate ``>= 0`` (a float or a 0-dim tensor, which may require grad).
        rel: ``None`` or ``(B, H, T, R)``: ``rel[..., i, d] = scale * q_i . r_d`` (:func:`relative_table`).
        scale: multiplies ``q . k``; ``None`` means ``1 / sqrt(D)``.
        q_offset, kv_start: absolute positions of query row 0 and key column 0.
        impl: ``"reference"`` (dense, the specification), ``"dense"`` (the reference's math with the score
            modification built from ``(T, S)`` matrices and one gather: about 1.7x faster on CPU, same memory),
            ``"banded"`` (linear in length), ``"sdpa"`` (float mask; not with ``decay="multiplicative"``),
            ``"flex"`` (score_mod + BlockMask; forward only on CPU) or ``"auto"`` (:func:`resolve_impl`:
            ``"flex"`` on CUDA; elsewhere ``"banded"``, or ``"dense"`` when the window covers half the keys or
            more, where the band saves nothing: a window of 864 over 431 steps trained at 60 s a step banded,
            6 s reference).

    Returns:
        ``(B, H, T, Dv)``.

    Raises:
        ValueError: naming the argument, before any computation.
    """
    _check(q, k, v, lookback, decay, gamma, rel, scale, q_offset, kv_start, impl)
    s = float(scale) if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    g = gamma if isinstance(gamma, Tensor) else torch.tensor(float(gamma), dtype=q.dtype, device=q.device)
    mod = DecayScoreMod(decay=decay, gamma=g.to(q.dtype), rel=rel, q_offset=q_offset, kv_start=kv_start)
    impl = resolve_impl(impl, device_type=q.device.type, lookback=lookback, kv_len=k.shape[-2], dtype=q.dtype)
    if impl == "banded":
        return banded_decayed_attention(q, k, v, lookback=lookback, mod=mod, scale=s)
    mask = window_mask(lookback, kv_start=kv_start)
    form = {"reference": reference_decayed_attention, "dense": dense_decayed_attention,
            "sdpa": sdpa_decayed_attention, "flex": flex_decayed_attention}[impl]
    return form(q, k, v, mask=mask, mod=mod, scale=s)
