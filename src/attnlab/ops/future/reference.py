"""Reference light future-aware attention (the "+merge" prefill of spec ``future_mask.md`` section 4): the
specification the fast form is tested against, written from the algorithm of section 4.4, line by line.

Shape legend: B batch, H query heads, H_kv key/value heads (H % H_kv == 0, G = H // H_kv), L sequence length
(queries and keys: one prefill over the whole prompt), D head dim, Dv value dim, p sink slots.

Steps (row ``i`` is a query, column ``j`` a key, positions 0-based):

1. scores ``S = scale * q k^T``                                                     ``(B, H, L, L)``
2. admitted future of row ``i``: ``F_i = {j > i : key_valid[j], rule_mu(i, j)}``, non-empty only for visual
   rows; ``rule_f = True``, ``rule_v2v = is_visual[j]``, ``rule_v2t = not is_visual[j]``
3. "same" pooling along the key axis inside ``F_i`` (stride 1, window ``j - k//2 .. j + k//2``):
   ``P[i, j] = max`` (or mean) of ``S[i, j']`` over the window's admitted ``j'``, for ``j`` in ``F_i``
4. reduce ``P[i, F_i]`` (in key order) to ``p`` values: bin ``t`` covers ranks ``floor(t n / p) ..
   ceil((t + 1) n / p) - 1`` of the ``n = |F_i|`` admitted keys (adaptive pooling; ``p = 1``: all of them),
   reduced by ``max``, ``mean`` or ``logsumexp``
5. ``C[i, slots[t]] = c_i[t]`` (``add_logit``) or ``log(exp S[i, s] + exp c_i) - S[i, s]`` (``lse_mass``)
6. ``A = softmax(S + C)`` over the keys ``j <= i`` that are not padding (the diagonal always counts), ``O = A V``

Imports nothing but torch. Inputs are assumed validated by :func:`attnlab.ops.future.light_future_attention`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["reference_light_future_attention"]


def _bins(values: Tensor, p: int, reduce: str) -> Tensor:
    """Step 4: the ``n`` values of one row, in key order, reduced into ``p`` adaptive bins: ``(p,)``."""
    n = values.shape[0]
    out = []
    for t in range(p):
        start, end = (t * n) // p, math.ceil((t + 1) * n / p)
        part = values[start:end]
        if reduce == "max":
            out.append(part.max())
        elif reduce == "mean":
            out.append(part.mean())
        else:
            out.append(torch.logsumexp(part, dim=0))
    return torch.stack(out)


def reference_light_future_attention(q: Tensor, k: Tensor, v: Tensor, is_visual: Tensor, key_valid: Tensor,
                                     slots: Tensor, *, mu: str, pool: str, pool_size: int, reduce: str,
                                     merge_mode: str, scale: float) -> Tensor:
    """Light future-aware prefill attention, computed step by step (see the module docstring).

    ``is_visual``, ``key_valid``: bool ``(B, L)``; ``slots``: int64 ``(B, p)``. Returns ``(B, H, L, Dv)``.
    """
    B, H, L, _ = q.shape
    G = H // k.shape[1]
    k = k.repeat_interleave(G, dim=1)  # (B, H, L, D)
    v = v.repeat_interleave(G, dim=1)  # (B, H, L, Dv)
    p, r = slots.shape[1], pool_size // 2
    pos = torch.arange(L, device=q.device)  # (L,)

    # 1. scores
    s = (q @ k.transpose(-2, -1)) * scale  # (B, H, L, L)

    # 2.-5. the merge term C, one visual row at a time
    c_bias = torch.zeros_like(s)  # (B, H, L, L)
    for b in range(B):
        for i in range(L):
            if not bool(is_visual[b, i]):
                continue
            rule = {"f": torch.ones_like(is_visual[b]), "v2v": is_visual[b], "v2t": ~is_visual[b]}[mu]  # (L,)
            future = (pos > i) & key_valid[b] & rule  # (L,): F_i
            if not bool(future.any()):
                continue
            for h in range(H):
                row = s[b, h, i]  # (L,)
                pooled = []
                for j in future.nonzero()[:, 0].tolist():
                    window = row[((pos - j).abs() <= r) & future]  # the window's admitted scores, j itself among them
                    pooled.append(window.max() if pool == "max" else window.mean())
                c = _bins(torch.stack(pooled), p, reduce)  # (p,)
                for t in range(p):
                    slot = int(slots[b, t])
                    if merge_mode == "add_logit":
                        c_bias[b, h, i, slot] = c[t]
                    else:  # lse_mass: the sink's logit becomes log(exp S[i, s] + exp c_i)
                        c_bias[b, h, i, slot] = torch.logaddexp(row[slot], c[t]) - row[slot]

    # 6. causal softmax over the non-padded keys; the diagonal is always allowed, so no row is empty
    allowed = (pos[None, :] <= pos[:, None]) & key_valid[:, None, :]  # (B, L, L)
    allowed = allowed | torch.eye(L, dtype=torch.bool, device=q.device)  # (B, L, L)
    s = (s + c_bias).masked_fill(~allowed[:, None], float("-inf"))  # (B, H, L, L)
    return torch.softmax(s, dim=-1) @ v  # (B, H, L, Dv)
