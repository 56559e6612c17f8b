"""Reference masked softmax attention: the specification every other backend is tested against.

Shape legend: B batch, H query heads, H_kv key/value heads (H % H_kv == 0, G = H // H_kv), T query length,
S key length, D head dim, Dv value dim.

Eager and readable, exact in float64. Steps:

1. scores ``s = scale * score(q, k)``                          ``(B, H, T, S)``
2. mask: ``s[b, h, i, j] = -inf`` where ``mask(b, h, q_offset + i, j)`` is False
3. softmax over ``j``; a row with no visible key gets probability 0 everywhere (so its output is 0, not NaN,
   and its gradients are 0, not NaN)
4. dropout on the probabilities (``F.dropout``, inverted scaling) when ``dropout_p > 0``
5. output ``p @ v``                                            ``(B, H, T, Dv)``

GQA/MQA: key/value head ``h // G`` serves query head ``h`` (``repeat_interleave`` over heads).
Inputs are assumed validated by :func:`attnlab.ops.softmax.api.softmax_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.masks import dense
from attnlab.ops.softmax.args import SoftmaxArgs
from attnlab.ops.softmax.scores import AdditiveScoreParams, GeneralScoreParams, additive_scores

__all__ = ["reference_softmax_attention", "reference_softmax_probs"]


def reference_softmax_probs(q: Tensor, k: Tensor, args: SoftmaxArgs) -> Tensor:
    """Steps 1-3 of the module docstring: the attention probabilities ``(B, H, T, S)`` (before dropout;
    ``args.dropout_p`` is not used)."""
    mask, scale, score, score_params, q_offset = args.mask, args.scale, args.score, args.score_params, args.q_offset
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv

    # 1. scores
    if score == "additive":
        assert isinstance(score_params, AdditiveScoreParams)
        s = additive_scores(q, k, score_params)  # (B, H, T, S), GQA handled inside
    else:
        k_rep = k.repeat_interleave(G, dim=1)  # (B, H, S, D)
        if score == "general":
            assert isinstance(score_params, GeneralScoreParams)
            q_eff = torch.einsum("bhtd,hde->bhte", q, score_params.weight)  # (B, H, T, D)  q W
        else:
            q_eff = q
        s = q_eff @ k_rep.transpose(-2, -1)  # (B, H, T, S)
    s = s * scale

    # 2. mask (evaluated at every (b, h) so that per-batch / per-head masks are exact)
    if mask is None:
        return torch.softmax(s, dim=-1)  # (B, H, T, S)
    allowed = dense(mask, T, S, batch_size=B, n_heads=H, q_offset=q_offset, device=q.device)  # (B, H, T, S)
    s = s.masked_fill(~allowed, float("-inf"))
    has_key = allowed.any(dim=-1, keepdim=True)  # (B, H, T, 1)
    # 3. rows without a visible key: softmax of zeros (finite), then multiplied by 0
    s = torch.where(has_key, s, torch.zeros((), dtype=s.dtype, device=s.device))
    return torch.softmax(s, dim=-1) * has_key  # (B, H, T, S)


def reference_softmax_attention(q: Tensor, k: Tensor, v: Tensor, args: SoftmaxArgs) -> Tensor:
    """Masked softmax attention, computed step by step. See the module docstring for the exact definition."""
    G = q.shape[1] // k.shape[1]
    p = reference_softmax_probs(q, k, args)  # (B, H, T, S)

    # 4. dropout on the probabilities
    if args.dropout_p > 0.0:
        p = F.dropout(p, p=args.dropout_p, training=True)

    # 5. weighted sum of values
    v_rep = v.repeat_interleave(G, dim=1)  # (B, H, S, Dv)
    return p @ v_rep  # (B, H, T, Dv)
