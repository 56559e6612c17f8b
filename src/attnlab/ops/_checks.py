"""Input checks shared by the public ops (:func:`~attnlab.ops.softmax.softmax_attention`,
:func:`~attnlab.ops.linear.linear_attention`)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["check_kv_like_q"]


def check_kv_like_q(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Keys and values must have the dtype and device of the queries (a ``ValueError`` naming which does not)."""
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name}.dtype must equal q.dtype={q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}.device must equal q.device={q.device}, got {t.device}")
