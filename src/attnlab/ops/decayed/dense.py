"""Dense windowed decayed attention with fewer passes over the scores: the CPU form for windows that cover most keys.

Shape legend: B batch, H heads, T query length, S key length, D head dim, Dv value dim, R relative offsets.

It computes what the reference computes (:mod:`attnlab.ops.decayed.reference`), over the full ``(T, S)`` score
matrix, but builds the score modification from ``(T, S)`` matrices and one gather instead of evaluating
:class:`~attnlab.ops.decayed.score_mod.DecayScoreMod` on index grids of ``(B, H, T, S)``:

* the decay factor ``exp(-gamma |d|)`` (or bias ``-gamma |d|``) depends on the offset ``d = i - j`` only, so it is
  one ``(T, S)`` matrix broadcast over batch and heads;
* the relative term ``rel[b, h, i, d]`` (zero where ``d`` is outside ``0 .. R - 1``) is one ``torch.gather`` along
  ``R`` with a ``(T, S)`` index expanded over batch and heads (out-of-range offsets read an appended zero column),
  where the reference indexes with four broadcast index tensors and then masks with ``torch.where``; the gather's
  backward is one ``scatter_add``, the reference's an accumulating ``index_put``;
* ``scale`` multiplies ``q`` (``(B, H, T, D)``) instead of the scores, and the "row without keys" masking is skipped
  when every row has a key (always, in self-attention over a sequence).

Each of those saves whole passes over ``(B, H, T, S)``, which is what a CPU spends its time on here: the two matrix
products are a small part. The form agrees with the reference in float64 to rounding, outputs and gradients
(``tests/ops/test_decayed_forms.py``). ``benchmarks/decayed_forms.py`` measured a training call (forward and
backward) at 0.56-0.61x the reference's time on one CPU thread at the ETTh1 AutoHFormer shapes
(``benchmarks/results/decayed-forms/results.md``); the two matrix products and the softmax are now most of what
is left. Memory is that of the reference: a few ``(B, H, T, S)`` tensors, so the banded form remains the one for
narrow windows over long sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.masks import Mask, dense
from attnlab.ops.decayed.score_mod import DecayScoreMod

__all__ = ["dense_decayed_attention", "relative_term"]


def relative_term(rel: Tensor, kv_len: int, *, q_offset: int = 0, kv_start: int = 0) -> Tensor:
    """``out[b, h, i, j] = rel[b, h, i, d]`` with ``d = (q_offset + i) - (kv_start + j)``, zero unless ``0 <= d < R``.

    Args:
        rel: ``(B, H, T, R)``, the table of :func:`attnlab.ops.decayed.relative_table`.
        kv_len: ``S``, the number of key columns.
        q_offset, kv_start: absolute positions of query row 0 and key column 0.

    Returns:
        ``(B, H, T, S)``: one ``torch.gather`` along ``R`` from the table with a zero column appended (offsets outside
        the table read it), with a ``(T, S)`` index expanded over batch and heads.
    """
    B, H, T, R = rel.shape
    d = ((torch.arange(T, device=rel.device)[:, None] + q_offset)
         - (torch.arange(kv_len, device=rel.device)[None, :] + kv_start))  # (T, S)
    idx = torch.where((d >= 0) & (d < R), d, torch.full_like(d, R))  # (T, S): R is the zero column
    return torch.gather(F.pad(rel, (0, 1)), -1, idx.expand(B, H, T, kv_len))  # (B, H, T, S)


def dense_decayed_attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Mask, mod: DecayScoreMod,
                            scale: float) -> Tensor:
    """The reference's five steps with the score modification built from ``(T, S)`` matrices and shifted views.

    Returns:
        ``(B, H, T, Dv)``; a query row with no visible key gives 0, as in the reference.
    """
    T, S = q.shape[2], k.shape[2]
    s = (q * scale) @ k.transpose(-2, -1)  # (B, H, T, S): scaling q costs a pass over (B, H, T, D), not (T, S)
    if mod.rel is not None:
        s = s + relative_term(mod.rel, S, q_offset=mod.q_offset, kv_start=mod.kv_start)  # (B, H, T, S)
    d = ((torch.arange(T, device=q.device)[:, None] + mod.q_offset)
         - (torch.arange(S, device=q.device)[None, :] + mod.kv_start)).abs().to(q.dtype)  # (T, S): |i - j|
    if mod.decay == "multiplicative":
        s = s * torch.exp(-mod.gamma * d)
    elif mod.decay == "additive":
        s = s - mod.gamma * d
    allowed = dense(mask, T, S, q_offset=mod.q_offset, device=q.device)  # (T, S)
    has_key = allowed.any(dim=-1, keepdim=True)  # (T, 1)
    s = s.masked_fill(~allowed, float("-inf"))  # (B, H, T, S)
    if bool(has_key.all()):  # the usual case: skip two passes over (B, H, T, S)
        return torch.softmax(s, dim=-1) @ v  # (B, H, T, Dv)
    return (torch.softmax(s.masked_fill(~has_key, 0.0), dim=-1) * has_key) @ v  # (B, H, T, Dv)
