"""CASTLE: causal attention with lookahead keys (Song et al. 2025, arXiv:2509.07301).

Forms: :func:`castle_reference` (recurrent definition), :func:`castle_parallel` (Theorem 1),
:func:`castle_chunked` (blocked O(T^2 D), custom backward), a Triton kernel (``impl="triton"``), and the UQ-KV
decoding helpers in :mod:`attnlab.ops.castle.decode`. Use :func:`castle_attention` to pick one by ``impl=``.

Names: ``lookahead=W`` is CASTLE-SWL's W (the paper's W, eq. 9): the lookahead key of token ``s`` summarises
``x_{s+1..s+W}``; the current token is not counted (``W = 0`` allowed; ``None``: full CASTLE). A ``window`` everywhere
else in attnlab counts the current token. ``chunk_size`` is the chunked form's positions per chunk.
"""

from attnlab.ops.castle.api import IMPLS, CastleImpl, castle_attention, triton_available
from attnlab.ops.castle.chunked import castle_chunked
from attnlab.ops.castle.decode import CastleState, castle_decode_step, castle_prefill, lookahead_keys
from attnlab.ops.castle.parallel import castle_parallel, lookahead_gate, lookahead_scores
from attnlab.ops.castle.reference import castle_reference, lookahead_keys_at

__all__ = [
    "IMPLS",
    "CastleImpl",
    "CastleState",
    "castle_attention",
    "castle_chunked",
    "castle_decode_step",
    "castle_parallel",
    "castle_prefill",
    "castle_reference",
    "lookahead_gate",
    "lookahead_keys",
    "lookahead_keys_at",
    "lookahead_scores",
    "triton_available",
]
