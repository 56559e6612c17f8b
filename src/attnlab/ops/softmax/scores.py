"""Attention score functions and their parameters.

Shape legend: B batch, H query heads, H_kv key/value heads (H % H_kv == 0), T query length, S key length,
D head dim, A additive (Bahdanau) hidden size, G = H // H_kv query heads per key/value head.

Scores, before the softmax (``scale`` multiplies every score; its default depends on the score):

=================  =======================================  ==================
``score``          ``s[b, h, i, j]``                         default ``scale``
=================  =======================================  ==================
``"scaled_dot"``   ``q_i . k_j``                             ``1 / sqrt(D)``
``"dot"``          ``q_i . k_j``  (Luong dot)                ``1``
``"general"``      ``q_i W_h k_j^T``  (Luong general)        ``1``
``"additive"``     ``v_h . tanh(q_i W_q,h + k_j W_k,h)``     ``1``
=================  =======================================  ==================

``"general"`` reduces to a dot product: ``q W k^T = (q W) k^T``, so every backend first forms ``q' = q @ W``
(``(B, H, T, D)``) and then runs plain dot-product attention on ``q'``; SDPA and FlexAttention can serve it.

``"additive"`` has no such reduction: it needs ``tanh`` of a ``(T, S, A)`` sum per head. Materialising the
whole ``(B, H, T, S, A)`` tensor would cost ``A`` times the score matrix, so :func:`additive_scores` works in
chunks of ``chunk_q`` query rows, in the forward *and* the backward pass (a custom autograd function recomputes
each chunk's ``tanh`` instead of saving it). That function is ``once_differentiable``: first-order gradients
only (double backward through the additive score raises).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Score",
    "SCORES",
    "GeneralScoreParams",
    "AdditiveScoreParams",
    "ScoreParams",
    "default_scale",
    "general_query",
    "additive_scores",
    "additive_chunk_rows",
    "ADDITIVE_CHUNK_BYTES",
]

Score = Literal["scaled_dot", "dot", "general", "additive"]
SCORES: tuple[str, ...] = ("scaled_dot", "dot", "general", "additive")

#: Default byte budget for one chunk of the additive score's ``(B, H, chunk_q, S, A)`` intermediate.
ADDITIVE_CHUNK_BYTES = 64 * 2**20


def _check_tensor(name: str, t: object, ndim: int, what: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {what}, got {type(t).__name__}")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have shape {what} ({ndim} dims), got {tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    return t


@dataclass(frozen=True, eq=False)
class GeneralScoreParams:
    """Parameters of Luong's *general* score ``s = q W k^T``.

    Attributes:
        weight: ``(H, D, D)``, one bilinear form per query head.
    """

    weight: Tensor

    def __post_init__(self) -> None:
        w = _check_tensor("GeneralScoreParams.weight", self.weight, 3, "(H, D, D)")
        if w.shape[1] != w.shape[2]:
            raise ValueError(f"GeneralScoreParams.weight must have shape (H, D, D), got {tuple(w.shape)}")

    @property
    def n_heads(self) -> int:
        return int(self.weight.shape[0])

    @property
    def head_dim(self) -> int:
        return int(self.weight.shape[1])

    def tensors(self) -> dict[str, Tensor]:
        return {"weight": self.weight}


@dataclass(frozen=True, eq=False)
class AdditiveScoreParams:
    """Parameters of Bahdanau's additive score ``s = v . tanh(q W_q + k W_k)``.

    Attributes:
        w_q: ``(H, D, A)`` query projection per query head.
        w_k: ``(H, D, A)`` key projection per query head (with GQA each query head still owns its ``W_k``).
        v: ``(H, A)`` output vector per query head.
    """

    w_q: Tensor
    w_k: Tensor
    v: Tensor

    def __post_init__(self) -> None:
        wq = _check_tensor("AdditiveScoreParams.w_q", self.w_q, 3, "(H, D, A)")
        wk = _check_tensor("AdditiveScoreParams.w_k", self.w_k, 3, "(H, D, A)")
        v = _check_tensor("AdditiveScoreParams.v", self.v, 2, "(H, A)")
        if wk.shape != wq.shape:
            raise ValueError(
                f"AdditiveScoreParams.w_k must have the shape of w_q {tuple(wq.shape)} (H, D, A), got {tuple(wk.shape)}"
            )
        if v.shape != (wq.shape[0], wq.shape[2]):
            raise ValueError(
                f"AdditiveScoreParams.v must have shape (H, A) = {(wq.shape[0], wq.shape[2])}, got {tuple(v.shape)}"
            )

    @property
    def n_heads(self) -> int:
        return int(self.w_q.shape[0])

    @property
    def head_dim(self) -> int:
        return int(self.w_q.shape[1])

    @property
    def hidden(self) -> int:
        return int(self.w_q.shape[2])

    def tensors(self) -> dict[str, Tensor]:
        return {"w_q": self.w_q, "w_k": self.w_k, "v": self.v}


ScoreParams = GeneralScoreParams | AdditiveScoreParams


def default_scale(score: str, head_dim: int) -> float:
    """The scale a score uses when ``scale=None``: ``1/sqrt(D)`` for ``scaled_dot``, ``1`` otherwise."""
    return 1.0 / math.sqrt(head_dim) if score == "scaled_dot" else 1.0


def general_query(q: Tensor, params: GeneralScoreParams) -> Tensor:
    """``q' = q @ W`` so that ``q W k^T = q' k^T``: ``(B, H, T, D) -> (B, H, T, D)``."""
    return torch.einsum("bhtd,hde->bhte", q, params.weight)


def _project_keys(k: Tensor, w_k: Tensor) -> Tensor:
    """``k W_k`` per *query* head without repeating ``k``: ``(B, H_kv, S, D) -> (B, H, S, A)``."""
    B, Hkv, S, D = k.shape
    H, _, A = w_k.shape
    w = w_k.view(Hkv, H // Hkv, D, A)  # (H_kv, G, D, A)
    return torch.einsum("bksd,kgda->bkgsa", k, w).reshape(B, H, S, A)  # (B, H, S, A)


def additive_chunk_rows(B: int, H: int, T: int, S: int, A: int, itemsize: int, budget_bytes: int) -> int:
    """Query rows per chunk so that one ``(B, H, chunk_q, S, A)`` tensor fits ``budget_bytes`` (at least 1)."""
    per_row = max(1, B * H * S * A * itemsize)
    return max(1, min(T, budget_bytes // per_row))


class _AdditiveScores(torch.autograd.Function):
    """``s[b,h,i,j] = sum_a v[h,a] tanh(qp[b,h,i,a] + kp[b,h,j,a])`` computed ``chunk`` query rows at a time.

    Saves only ``qp``, ``kp``, ``v`` for the backward pass and recomputes each chunk's ``tanh`` there, so the
    extra memory of either pass is one ``(B, H, chunk, S, A)`` tensor (plus a few of that size transiently).
    """

    @staticmethod
    def forward(ctx, qp: Tensor, kp: Tensor, v: Tensor, chunk: int) -> Tensor:  # type: ignore[override]
        B, H, T, A = qp.shape
        S = kp.shape[2]
        out = qp.new_empty(B, H, T, S)  # (B, H, T, S)
        vv = v.view(1, H, 1, 1, A)
        for t0 in range(0, T, chunk):
            t1 = min(T, t0 + chunk)
            th = torch.tanh(qp[:, :, t0:t1, None, :] + kp[:, :, None, :, :])  # (B, H, c, S, A)
            out[:, :, t0:t1] = (th * vv).sum(-1)  # (B, H, c, S)
        ctx.save_for_backward(qp, kp, v)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        qp, kp, v = ctx.saved_tensors
        chunk = ctx.chunk
        B, H, T, A = qp.shape
        vv = v.view(1, H, 1, 1, A)
        gqp = torch.empty_like(qp)  # (B, H, T, A)
        gkp = torch.zeros_like(kp)  # (B, H, S, A)
        gv = torch.zeros_like(v)  # (H, A)
        for t0 in range(0, T, chunk):
            t1 = min(T, t0 + chunk)
            th = torch.tanh(qp[:, :, t0:t1, None, :] + kp[:, :, None, :, :])  # (B, H, c, S, A)
            g = grad[:, :, t0:t1, :, None]  # (B, H, c, S, 1)
            gv += (g * th).sum((0, 2, 3))
            gpre = g * vv * (1 - th * th)  # (B, H, c, S, A) d s / d(qp + kp)
            gqp[:, :, t0:t1] = gpre.sum(3)
            gkp += gpre.sum(2)
        return gqp, gkp, gv, None


def additive_scores(
    q: Tensor,
    k: Tensor,
    params: AdditiveScoreParams,
    *,
    chunk_q: int | None = None,
    budget_bytes: int = ADDITIVE_CHUNK_BYTES,
) -> Tensor:
    """Bahdanau scores ``s[b,h,i,j] = v_h . tanh(q_i W_q,h + k_j W_k,h)`` of shape ``(B, H, T, S)``.

    Args:
        q: ``(B, H, T, D)``.
        k: ``(B, H_kv, S, D)``; with GQA query head ``h`` reads key head ``h // (H // H_kv)``.
        params: the ``(H, D, A)``, ``(H, D, A)``, ``(H, A)`` weights.
        chunk_q: query rows per chunk; ``None`` chooses the largest that keeps one chunk within
            ``budget_bytes``.
        budget_bytes: byte budget for one chunk's ``(B, H, chunk_q, S, A)`` intermediate.

    Memory: besides the ``(B, H, T, S)`` result and the ``(B, H, T, A)``/``(B, H, S, A)`` projections, peak
    extra memory is ``O(B * H * chunk_q * S * A)`` elements in the forward and the backward pass, i.e. about
    ``budget_bytes`` times a small constant (the ``tanh``, its product with the gradient and the sum). The full
    ``(B, H, T, S, A)`` tensor is never built unless it fits the budget. The result does not depend on
    ``chunk_q`` beyond floating-point summation order (identical in practice; tested).
    """
    B, H, T, _ = q.shape
    S = k.shape[2]
    A = params.hidden
    if chunk_q is None:
        chunk_q = additive_chunk_rows(B, H, T, S, A, q.element_size(), budget_bytes)
    if isinstance(chunk_q, bool) or not isinstance(chunk_q, int) or chunk_q < 1:
        raise ValueError(f"chunk_q must be an int >= 1, got {chunk_q!r}")
    qp = torch.einsum("bhtd,hda->bhta", q, params.w_q)  # (B, H, T, A)
    kp = _project_keys(k, params.w_k)  # (B, H, S, A)
    return _AdditiveScores.apply(qp, kp, params.v, chunk_q)  # (B, H, T, S)
