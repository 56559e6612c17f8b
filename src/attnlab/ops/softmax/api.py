"""Public entry point: :func:`softmax_attention`, masked softmax attention with a choice of backend.

Shape legend: B batch, H query heads, H_kv key/value heads (H % H_kv == 0), T query length, S key length,
D head dim, Dv value dim, A additive hidden size.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from attnlab.masks import Mask, as_mask
from attnlab.ops._checks import check_kv_like_q
from attnlab.ops.softmax.args import SoftmaxArgs
from attnlab.ops.softmax.flex import FLEX_SCORES, flex_softmax_attention
from attnlab.ops.softmax.reference import reference_softmax_attention
from attnlab.ops.softmax.scores import (
    SCORES,
    AdditiveScoreParams,
    GeneralScoreParams,
    Score,
    ScoreParams,
    default_scale,
)
from attnlab.ops.softmax.sdpa import SDPA_SCORES, sdpa_softmax_attention

__all__ = ["softmax_attention", "SOFTMAX_IMPLS", "SCORES", "SoftmaxImpl", "resolve_impl"]

SoftmaxImpl = Literal["auto", "reference", "sdpa", "flex"]
SOFTMAX_IMPLS: tuple[str, ...] = ("auto", "reference", "sdpa", "flex")

_BACKENDS = {
    "reference": reference_softmax_attention,
    "sdpa": sdpa_softmax_attention,
    "flex": flex_softmax_attention,
}


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _validate(
    q: object,
    k: object,
    v: object,
    mask: object,
    scale: object,
    score: object,
    score_params: object,
    q_offset: object,
    dropout_p: object,
    impl: object,
) -> None:
    for name, t, legend in (("q", q, "(B, H, T, D)"), ("k", k, "(B, H_kv, S, D)"), ("v", v, "(B, H_kv, S, Dv)")):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape {legend}, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must have 4 dims {legend}, got shape {_shape(t)}")
        if not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    assert isinstance(q, Tensor) and isinstance(k, Tensor) and isinstance(v, Tensor)
    check_kv_like_q(q, k, v)
    B, H, T, D = q.shape
    Bk, Hkv, S, Dk = k.shape
    if Bk != B:
        raise ValueError(f"k batch size must equal q's B={B}, got k shape {_shape(k)}")
    if Dk != D:
        raise ValueError(f"k head dim must equal q's D={D}, got k shape {_shape(k)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must have shape (B, H_kv, S, Dv) = {(B, Hkv, S)} + (Dv,), got {_shape(v)}")
    for name, n in (("T", T), ("S", S), ("D", D), ("H", H), ("H_kv", Hkv), ("Dv", v.shape[3])):
        if n < 1:
            raise ValueError(f"{name} must be >= 1, got {name}={n} (q {_shape(q)}, k {_shape(k)}, v {_shape(v)})")
    if H % Hkv != 0:
        raise ValueError(f"H_kv={Hkv} key/value heads must divide H={H} query heads (GQA/MQA)")

    if isinstance(q_offset, bool) or not isinstance(q_offset, int) or q_offset < 0:
        raise ValueError(f"q_offset must be an int >= 0, got {q_offset!r}")
    if mask is not None:
        if not isinstance(mask, Mask):
            raise ValueError(f"mask must be an attnlab.masks.Mask, a mask_mod callable or None, got "
                             f"{type(mask).__name__}")
        if mask.max_len is not None and (q_offset + T > mask.max_len or S > mask.max_len):
            raise ValueError(
                f"mask {mask.name} is defined for positions < max_len={mask.max_len}, got query positions "
                f"up to q_offset + T = {q_offset + T} and S={S} keys"
            )
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"scale must be a finite float or None, got {scale!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")

    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if score in ("scaled_dot", "dot"):
        if score_params is not None:
            raise ValueError(f"score={score!r} takes no score_params, got {type(score_params).__name__}")
    else:
        want = GeneralScoreParams if score == "general" else AdditiveScoreParams
        if not isinstance(score_params, want):
            raise ValueError(f"score={score!r} needs score_params={want.__name__}(...), got {type(score_params).__name__}")
        if score_params.n_heads != H or score_params.head_dim != D:
            shapes = {n: _shape(t) for n, t in score_params.tensors().items()}
            raise ValueError(
                f"score_params {want.__name__} must be for H={H} heads of dim D={D}, got shapes {shapes}"
            )
        for n, t in score_params.tensors().items():
            if t.dtype != q.dtype or t.device != q.device:
                raise ValueError(
                    f"score_params.{n} must have q's dtype {q.dtype} and device {q.device}, got {t.dtype} on {t.device}"
                )

    if impl not in SOFTMAX_IMPLS:
        raise ValueError(f"impl must be one of {SOFTMAX_IMPLS}, got {impl!r}")
    if impl == "sdpa" and score not in SDPA_SCORES:
        raise ValueError(f"impl='sdpa' does not support score={score!r}; it supports {SDPA_SCORES}")
    if impl == "flex":
        if score not in FLEX_SCORES:
            raise ValueError(f"impl='flex' does not support score={score!r}; it supports {FLEX_SCORES}")
        if dropout_p > 0:
            raise ValueError(f"impl='flex' does not support dropout, got dropout_p={dropout_p}; use impl='sdpa'")


def resolve_impl(
    impl: str, *, device: torch.device, mask: Mask | None, score: str, dropout_p: float
) -> Literal["reference", "sdpa", "flex"]:
    """The backend ``impl="auto"`` picks (other values are returned unchanged).

    * FlexAttention on CUDA for sparse masks (anything but ``None``, ``full`` or plain causal), when the
      score is one it supports and there is no dropout: it skips the empty blocks.
    * SDPA when the score allows (``scaled_dot``, ``dot``, ``general``).
    * The reference otherwise (``additive``).
    """
    if impl != "auto":
        return impl  # type: ignore[return-value]
    sparse = mask is not None and not mask.full and not mask.plain_causal
    if device.type == "cuda" and sparse and score in FLEX_SCORES and dropout_p == 0.0:
        return "flex"
    if score in SDPA_SCORES:
        return "sdpa"
    return "reference"


def softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Mask | None = None,
    scale: float | None = None,
    score: Score = "scaled_dot",
    score_params: ScoreParams | None = None,
    q_offset: int = 0,
    dropout_p: float = 0.0,
    impl: SoftmaxImpl = "auto",
) -> Tensor:
    """Masked softmax attention ``softmax(scale * score(q, k) + mask) @ v``.

    Args:
        q: queries ``(B, H, T, D)``.
        k: keys ``(B, H_kv, S, D)`` with ``H % H_kv == 0`` (``H_kv < H``: GQA; ``H_kv == 1``: MQA); query head
            ``h`` reads key/value head ``h // (H // H_kv)``.
        v: values ``(B, H_kv, S, Dv)``.
        mask: an :class:`attnlab.masks.Mask`, a FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx)`` callable
            (e.g. from attention-gym; applied as a general mask, no facts assumed), or ``None`` for no masking.
            Query row ``i`` is at absolute position ``q_offset + i``; key ``j`` at position ``j``.
        scale: multiplies every score; ``None`` means ``1/sqrt(D)`` for ``"scaled_dot"`` and ``1`` otherwise.
        score: ``"scaled_dot"`` (``q.k``), ``"dot"`` (Luong dot, ``q.k``), ``"general"`` (Luong general,
            ``q W k^T``), ``"additive"`` (Bahdanau, ``v . tanh(q W_q + k W_k)``).
        score_params: ``GeneralScoreParams`` for ``"general"``, ``AdditiveScoreParams`` for ``"additive"``,
            ``None`` otherwise; tensors on q's device and dtype.
        q_offset: absolute position of query row 0 (decoding with a cache of ``t`` keys uses ``q_offset=t``).
        dropout_p: dropout probability on the attention weights (apply only in training).
        impl: ``"auto"``, ``"reference"``, ``"sdpa"`` or ``"flex"``; see :func:`resolve_impl` for ``"auto"``.

    Returns:
        ``(B, H, T, Dv)``. Rows with no visible key are zeros (and get zero gradients), never NaN.

    Raises:
        ValueError: for any inconsistent argument, before any computation.
    """
    if mask is not None and not isinstance(mask, Mask) and callable(mask):  # a FlexAttention-style mask_mod
        mask = as_mask(mask)
    _validate(q, k, v, mask, scale, score, score_params, q_offset, dropout_p, impl)
    D = q.shape[-1]
    s = float(scale) if scale is not None else default_scale(score, D)
    backend = resolve_impl(impl, device=q.device, mask=mask, score=score, dropout_p=float(dropout_p))
    args = SoftmaxArgs(mask=mask, scale=s, score=score, score_params=score_params, q_offset=q_offset,
                       dropout_p=float(dropout_p))
    return _BACKENDS[backend](q, k, v, args)
