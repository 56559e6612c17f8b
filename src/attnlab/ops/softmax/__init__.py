"""Masked softmax attention (scaled dot-product, Luong dot/general, Bahdanau additive) with reference, SDPA
and FlexAttention backends. See :func:`softmax_attention`."""

from attnlab.ops.softmax.api import SOFTMAX_IMPLS, SoftmaxImpl, resolve_impl, softmax_attention
from attnlab.ops.softmax.scores import SCORES, AdditiveScoreParams, GeneralScoreParams, Score

__all__ = [
    "softmax_attention",
    "resolve_impl",
    "GeneralScoreParams",
    "AdditiveScoreParams",
    "SOFTMAX_IMPLS",
    "SCORES",
    "SoftmaxImpl",
    "Score",
]
