"""The validated arguments of one softmax-attention call, as every backend receives them."""

from __future__ import annotations

from dataclasses import dataclass

from attnlab.masks import Mask
from attnlab.ops.softmax.scores import ScoreParams

__all__ = ["SoftmaxArgs"]


@dataclass(frozen=True)
class SoftmaxArgs:
    """What :func:`attnlab.ops.softmax.softmax_attention` hands a backend after validating its arguments.

    Attributes:
        mask: the :class:`~attnlab.masks.Mask`, or ``None`` for no masking.
        scale: the resolved score multiplier (``None`` was already turned into the score's default).
        score: ``"scaled_dot"``, ``"dot"``, ``"general"`` or ``"additive"``.
        score_params: the score's parameters (``None`` for ``scaled_dot`` and ``dot``).
        q_offset: absolute position of query row 0.
        dropout_p: dropout probability on the attention weights.
    """

    mask: Mask | None
    scale: float
    score: str
    score_params: ScoreParams | None = None
    q_offset: int = 0
    dropout_p: float = 0.0
