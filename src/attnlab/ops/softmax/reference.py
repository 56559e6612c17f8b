"""Reference masked softmax attention: the specification every other backend is tested against.

Shape legend: B batch, H query heads, H_kv key/value heads (H % H_kv == 0, G = H // H_kv), T query length,
S key length, D head dim, Dv value dim.

Eager and readable, exact in float64. Steps:

1. scores ``s = scale * score(q, k)``                          ``(B, H, T, S)``
2. mask: ``s[b, h, i, j] = -inf`` where ``mask(b, h, q_offset + i, j)`` is False
3. softmax over ``j``; a row with no visible key gets probability 0 everywhere (so its output is 0, not NaN,
   and its gradients are 0, not NaN)
4. dropout on the probabilities (``F.dropout``, inverted scaling) when ``dropout_p > 0``
5. output ``o[i] = sum over visible j of p[i, j] v[j]``        ``(B, H, T, Dv)``

GQA/MQA: key/value head ``h // G`` serves query head ``h`` (``repeat_interleave`` over heads).
Inputs are assumed validated by :func:`attnlab.ops.softmax.api.softmax_attention`.

Half precision
    float16/bfloat16 inputs (and their score parameters) are computed in float32 and the result is cast back to
    the input dtype; gradients flow back in the input dtype. Computed in the input dtype, float16 scores
    overflow for large ``q``, ``k`` (``|s| > 65504`` becomes ``inf``, and ``inf - inf`` in the softmax is NaN) and
    bfloat16 keeps 8 bits of the scores the softmax exponentiates. Measured (B=1, H=2, T=32, D=16, causal, 3
    seeds, largest output error against float64 on the same rounded inputs): with ``q``, ``k`` scaled by 100,
    float16 gave NaN in 400-592 of 1,024 outputs; scaled by 10, bfloat16 errors reached 0.35 and float16 0.026.
    In float32 internally: no NaN, errors 0.0065 (bfloat16) and 0.00098 (float16), those of SDPA (the final
    rounding to the input dtype).

NaN and inf at masked-out positions
    A key or value that a query cannot see never reaches that query's output, whatever it holds (NaN, inf):
    masked scores are *replaced* by ``-inf`` (step 2), not added to, and step 5 sums only visible positions
    instead of multiplying masked ones by a probability of 0 (``0 * NaN = NaN``, so a plain ``p @ v`` would
    spread a NaN in one future value to every earlier row). The gradients of visible positions stay finite as
    well: a non-finite key enters the scores the same way, only where it is visible (for the ``scaled_dot``,
    ``dot`` and ``general`` scores; with ``additive`` a non-finite masked key leaves the outputs clean but makes
    the gradients of ``q`` and the score parameters NaN). Non-finite entries at *visible* positions propagate,
    as they should, and so do their gradients (a query that sees a NaN value makes the gradient of every key
    it sees NaN). The cost when everything is finite is one ``isfinite`` pass over ``k`` and one over ``v``
    (the masked sums, which materialise a ``(B, H, T, S, D)`` product, run only when an entry is not finite).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.masks import dense
from attnlab.ops.softmax.args import SoftmaxArgs
from attnlab.ops.softmax.scores import AdditiveScoreParams, GeneralScoreParams, additive_scores

__all__ = ["reference_softmax_attention", "reference_softmax_probs"]

#: Dtypes computed in float32 internally (the result is cast back).
_HALF = (torch.float16, torch.bfloat16)


def _float32_args(args: SoftmaxArgs) -> SoftmaxArgs:
    """``args`` with its score parameters in float32 (they share q's half dtype)."""
    params = args.score_params
    if isinstance(params, GeneralScoreParams):
        params = GeneralScoreParams(weight=params.weight.float())
    elif isinstance(params, AdditiveScoreParams):
        params = AdditiveScoreParams(w_q=params.w_q.float(), w_k=params.w_k.float(), v=params.v.float())
    return replace(args, score_params=params)


def _visible_scores(q: Tensor, k: Tensor, allowed: Tensor | None) -> Tensor:
    """``q @ k^T`` ``(B, H, T, S)``, in which a non-finite key enters only the scores of the queries that see it.

    ``q @ k^T`` when every key is finite (or nothing is masked). Otherwise the finite part goes through the matmul
    and each non-finite key entry is added only where its key is visible, both factors zeroed at masked positions
    *before* the product: the masked scores are replaced in step 2 anyway, and this way their zero gradient is not
    multiplied by a NaN key on its way back to ``q`` (``dq = ds @ k``).
    """
    if allowed is None:
        return q @ k.transpose(-2, -1)  # (B, H, T, S)
    finite = torch.isfinite(k)  # (B, H, S, D)
    if bool(finite.all()):
        return q @ k.transpose(-2, -1)  # (B, H, T, S)
    zero = torch.zeros((), dtype=k.dtype, device=k.device)
    s = q @ torch.where(finite, k, zero).transpose(-2, -1)  # (B, H, T, S)
    bad = torch.where(finite, zero, k)[:, :, None]  # (B, H, 1, S, D): the non-finite entries, 0 elsewhere
    seen = allowed[..., None]  # (B, H, T, S, 1)
    return s + (torch.where(seen, q[:, :, :, None], zero) * torch.where(seen, bad, zero)).sum(-1)  # (B, H, T, S)


def _probs(q: Tensor, k: Tensor, args: SoftmaxArgs) -> tuple[Tensor, Tensor | None]:
    """Steps 1-3: the probabilities ``(B, H, T, S)`` and where attention is allowed (``None``: everywhere)."""
    mask, scale, score, score_params, q_offset = args.mask, args.scale, args.score, args.score_params, args.q_offset
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    G = H // Hkv
    # where attention is allowed, evaluated at every (b, h) so that per-batch / per-head masks are exact
    allowed = None if mask is None else dense(mask, T, S, batch_size=B, n_heads=H, q_offset=q_offset,
                                              device=q.device)  # (B, H, T, S)

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
        s = _visible_scores(q_eff, k_rep, allowed)  # (B, H, T, S)
    s = s * scale

    # 2. mask: the masked scores are replaced (not added to), which also drops a NaN score from a masked key
    if allowed is None:
        return torch.softmax(s, dim=-1), None  # (B, H, T, S)
    s = s.masked_fill(~allowed, float("-inf"))
    has_key = allowed.any(dim=-1, keepdim=True)  # (B, H, T, 1)
    # 3. rows without a visible key: softmax of zeros (finite), then multiplied by 0
    s = torch.where(has_key, s, torch.zeros((), dtype=s.dtype, device=s.device))
    return torch.softmax(s, dim=-1) * has_key, allowed  # (B, H, T, S)


def reference_softmax_probs(q: Tensor, k: Tensor, args: SoftmaxArgs) -> Tensor:
    """Steps 1-3 of the module docstring: the attention probabilities ``(B, H, T, S)`` (before dropout;
    ``args.dropout_p`` is not used). float16/bfloat16 are computed in float32 and returned in the input dtype."""
    if q.dtype in _HALF:
        return _probs(q.float(), k.float(), _float32_args(args))[0].to(q.dtype)
    return _probs(q, k, args)[0]


def _weighted_values(p: Tensor, v_rep: Tensor, allowed: Tensor | None) -> Tensor:
    """Step 5, ``o[i] = sum over visible j of p[i, j] v[j]``: ``(B, H, T, Dv)``.

    ``p @ v`` when every value is finite (a masked ``p`` is exactly 0). Otherwise the finite part goes through
    the matmul and each non-finite entry is added only where its key is visible; both factors are zeroed at masked
    positions *before* the product, so that neither the output nor any gradient sees ``0 * NaN``.
    """
    if allowed is None:
        return p @ v_rep  # (B, H, T, Dv): nothing is masked
    finite = torch.isfinite(v_rep)  # (B, H, S, Dv)
    if bool(finite.all()):
        return p @ v_rep  # (B, H, T, Dv)
    zero = torch.zeros((), dtype=v_rep.dtype, device=v_rep.device)
    out = p @ torch.where(finite, v_rep, zero)  # (B, H, T, Dv)
    bad = torch.where(finite, zero, v_rep)[:, :, None]  # (B, H, 1, S, Dv): the non-finite entries, 0 elsewhere
    seen = allowed[..., None]  # (B, H, T, S, 1)
    return out + (torch.where(seen, p[..., None], zero) * torch.where(seen, bad, zero)).sum(-2)  # (B, H, T, Dv)


def reference_softmax_attention(q: Tensor, k: Tensor, v: Tensor, args: SoftmaxArgs) -> Tensor:
    """Masked softmax attention, computed step by step. See the module docstring for the exact definition."""
    if q.dtype in _HALF:  # computed in float32, returned (and differentiated) in the input dtype
        return reference_softmax_attention(q.float(), k.float(), v.float(), _float32_args(args)).to(q.dtype)
    G = q.shape[1] // k.shape[1]
    p, allowed = _probs(q, k, args)  # (B, H, T, S), (B, H, T, S) or None

    # 4. dropout on the probabilities
    if args.dropout_p > 0.0:
        p = F.dropout(p, p=args.dropout_p, training=True)

    # 5. weighted sum of the visible values
    v_rep = v.repeat_interleave(G, dim=1)  # (B, H, S, Dv)
    return _weighted_values(p, v_rep, allowed)  # (B, H, T, Dv)
