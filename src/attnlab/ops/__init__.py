"""Functional attention, one sub-package per family, each with a reference and faster forms chosen by ``impl=``.

* :func:`softmax_attention` (:mod:`attnlab.ops.softmax`): reference, SDPA, FlexAttention;
* :func:`linear_attention` (:mod:`attnlab.ops.linear`): parallel, chunked, recurrent;
* :func:`castle_attention` (:mod:`attnlab.ops.castle`): reference, parallel, chunked, Triton;
* :func:`decayed_window_attention` (:mod:`attnlab.ops.decayed`): windowed causal attention with exponential decay
  (AutoHFormer): reference, dense, banded, SDPA, FlexAttention.

Shapes: queries ``(B, H, T, D)``, keys and values ``(B, H_kv, S, D)``.
"""

from attnlab.ops.castle import castle_attention
from attnlab.ops.decayed import decayed_window_attention
from attnlab.ops.linear import linear_attention
from attnlab.ops.softmax import softmax_attention

__all__ = ["softmax_attention", "linear_attention", "castle_attention", "decayed_window_attention"]
