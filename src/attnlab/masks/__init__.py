"""Attention masks as FlexAttention-style predicates ``mask_mod(b, h, q_idx, kv_idx) -> bool``.

See :mod:`attnlab.masks.patterns` for every pattern and its exact index convention, :mod:`attnlab.masks.vlm` for
the future-aware vision-language masks over per-position token types, and :func:`attnlab.masks.dense` to
materialise one. Indices are absolute positions: in cached decoding the query at step ``t`` has ``q_idx = t``.
"""

from attnlab.masks import core, padding, patterns, vlm
from attnlab.masks.core import Mask, MaskFn, and_masks, as_mask, dense, or_masks
from attnlab.masks.padding import key_padding
from attnlab.masks.patterns import (
    bidirectional,
    bigbird,
    causal,
    document,
    fixed,
    prefix_lm,
    sliding_window,
    strided,
)
from attnlab.masks.vlm import (
    FUTURE_KINDS,
    SEMANTICS,
    FutureKind,
    Semantics,
    TokenTypes,
    check_is_visual,
    extra_pairs,
    future_full,
    future_mask,
    future_v2t,
    future_v2v,
    token_types,
    vlm_causal,
)

__all__ = [*core.__all__, *patterns.__all__, *padding.__all__, *vlm.__all__]
