"""Light future-aware attention on SDPA: causal SDPA for every row, then an exact correction of the visual rows.

Shape legend: B batch, H query heads, H_kv key/value heads (H % H_kv == 0, G = H // H_kv), L sequence length,
m the most visual tokens of any sample in the batch (visual query rows), D head dim, Dv value dim, p sink slots.

Only the visual rows can carry a merge (spec section 4.4, step 2), so the extra work is done on them alone:

1. gather the ``m`` visual query rows and score them against every key, ``S_V = scale * q_V k^T``
   ``(B, H, m, L)``: ``m L`` dot products per head, not ``L^2``
2. the admitted future ``F`` of those rows; pooling with ``max_pool1d`` / ``avg_pool1d`` (stride 1, padding
   ``k // 2``) on the masked scores, the mean as a ratio of pooled sums and pooled counts
3. adaptive bins by each admitted key's rank in its row, reduced by max / mean / logsumexp; the default
   (``pool="max"``, ``reduce="max"``, ``p = 1``) takes the masked row maximum directly, which every pooling size
   gives (section 4.5, k-invariance): the merge ``delta`` ``(B, H, m, p)`` added to the slots' logits
4. one SDPA call over all rows with the causal mask alone (``is_causal``, the fused fast path, when nothing is
   padded; else the boolean causal-and-padding mask), giving ``O`` and, from ``S_V``, each visual row's
   ``lse = logsumexp`` over its causal keys
5. the merge only reweights the ``p`` slot keys, so each merging row is corrected in closed form: with the slots'
   old weights ``a_t = exp(S_t - lse)`` and new relative weights ``w_t = exp(S_t + delta_t - lse)``,
   ``O' = (O - sum_t a_t v_t + sum_t w_t v_t) / (1 - sum_t a_t + sum_t w_t)``, evaluated with every exponent
   shifted by ``M = max(0, max_t log w_t)`` so that no weight overflows. ``lse`` is stabilised by the row's whole
   maximum, so it costs four passes over ``S_V`` and no masked copy.
6. where that closed form is ill-conditioned (the merged normaliser below 1e-2 of the causal one: the difference
   cancels) or a weight underflowed, the row is computed directly, ``softmax(S_V + merge) V`` over its causal keys,
   for the whole batch at once; exact inputs never take that path unless such a row exists.

No ``(B, H, L, L)`` tensor is built; the extra work is ``O(m L (D + 1))`` per head. Without any merge row the call
is the causal SDPA alone. Inputs are assumed validated by :func:`attnlab.ops.future.light_future_attention`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sdpa_light_future_attention", "merge_terms", "Merge"]


def _visual_rows(is_visual: Tensor) -> tuple[Tensor, Tensor]:
    """The visual positions of each sample in order, padded to the largest count ``m``: ``(B, m)`` indices
    and ``(B, m)`` flags (False at the padding entries, which index non-visual positions)."""
    m = int(is_visual.sum(dim=1).max())
    order = torch.sort((~is_visual).to(torch.int8), dim=1, stable=True).indices[:, :m]  # (B, m): visual first
    return order, is_visual.gather(1, order)


def _pooled(s: Tensor, admitted: Tensor, pool: str, pool_size: int) -> Tensor:
    """Step 2: "same" pooling of ``s`` ``(B, H, m, L)`` inside ``admitted`` ``(B, 1, m, L)`` along the keys."""
    if pool_size == 1:
        return s
    B, H, m, L = s.shape
    r = pool_size // 2
    if pool == "max":
        sf = s.masked_fill(~admitted, float("-inf")).reshape(B * H * m, 1, L)
        return F.max_pool1d(sf, pool_size, stride=1, padding=r).reshape(B, H, m, L)
    num = F.avg_pool1d(torch.where(admitted, s, 0.0).reshape(B * H * m, 1, L), pool_size, stride=1, padding=r)
    den = F.avg_pool1d(admitted.expand_as(s).to(s.dtype).reshape(B * H * m, 1, L), pool_size, stride=1, padding=r)
    # windows without an admitted key are never kept; the clamp keeps their gradient finite (no 0/0)
    return (num / den.clamp_min(0.5 / pool_size)).reshape(B, H, m, L)


def _reduced(pooled: Tensor, admitted: Tensor, p: int, reduce: str) -> Tensor:
    """Step 3: the admitted pooled scores of each row in ``p`` adaptive bins by key rank: ``(B, H, m, p)``."""
    rank = admitted.long().cumsum(-1) - 1  # (B, 1, m, L): rank of each admitted key in its row
    n = admitted.sum(-1, keepdim=True)  # (B, 1, m, 1)
    t = torch.arange(p, device=pooled.device)  # (p,)
    start = (t * n[..., None]) // p  # (B, 1, m, 1, p)
    end = ((t + 1) * n[..., None] + p - 1) // p  # (B, 1, m, 1, p): ceil((t + 1) n / p)
    member = admitted[..., None] & (rank[..., None] >= start) & (rank[..., None] < end)  # (B, 1, m, L, p)
    x = pooled[..., None]  # (B, H, m, L, 1)
    if reduce == "mean":
        return torch.where(member, x, 0.0).sum(-2) / member.sum(-2)  # (B, H, m, p)
    masked = x.masked_fill(~member, float("-inf"))  # (B, H, m, L, p)
    return masked.amax(-2) if reduce == "max" else torch.logsumexp(masked, dim=-2)  # (B, H, m, p)


class Merge(NamedTuple):
    """The merge of the visual rows (steps 1-3 of the module docstring)."""

    rows: Tensor  # (B, m): the visual positions of each sample (padding entries: other positions, merges False)
    delta: Tensor  # (B, H, m, p): what is added to the logits at ``slots`` in row ``rows[b, r]`` (0 where no merge)
    merges: Tensor  # (B, 1, m, 1): whether the row has an admitted future
    scores: Tensor  # (B, H, m, L): ``S_V``, the rows' scaled scores against every key


def merge_terms(q: Tensor, k: Tensor, is_visual: Tensor, key_valid: Tensor, slots: Tensor, *, mu: str, pool: str,
                pool_size: int, reduce: str, merge_mode: str, scale: float) -> Merge | None:
    """The merge of every visual row (:class:`Merge`); ``None`` when no row merges. ``k`` is ``(B, H, L, D)``
    (key/value heads already repeated)."""
    if not bool(is_visual.any()):
        return None
    B, H, L, D = q.shape
    rows, real = _visual_rows(is_visual)  # (B, m) x 2
    q_v = q.gather(2, rows[:, None, :, None].expand(B, H, rows.shape[1], D))  # (B, H, m, D)
    s_v = (q_v * scale) @ k.transpose(-2, -1)  # (B, H, m, L): the only extra scores (scaled before the matmul)
    pos = torch.arange(L, device=q.device)  # (L,)
    rule = {"f": torch.ones_like(is_visual), "v2v": is_visual, "v2t": ~is_visual}[mu]  # (B, L)
    admitted = (pos > rows[..., None]) & (key_valid & rule)[:, None, :] & real[..., None]  # (B, m, L)
    merges = admitted.any(-1)[:, None, :, None]  # (B, 1, m, 1)
    if not bool(merges.any()):
        return None
    admitted = (admitted[:, None] | ~merges)  # (B, 1, m, L): rows without a merge admit all (dropped below)
    p = slots.shape[1]
    if pool == "max" and reduce == "max" and p == 1:
        c = s_v.masked_fill(~admitted, float("-inf")).amax(-1, keepdim=True)  # (B, H, m, 1): masked row maximum
    else:
        c = _reduced(_pooled(s_v, admitted, pool, pool_size), admitted, p, reduce)  # (B, H, m, p)
    if merge_mode == "lse_mass":
        s_slot = s_v.gather(-1, slots[:, None, None, :].expand(B, H, rows.shape[1], p))  # (B, H, m, p)
        c = torch.logaddexp(s_slot, c) - s_slot
    return Merge(rows, torch.where(merges, c, 0.0), merges, s_v)


def _exact_rows(s_v: Tensor, v: Tensor, causal: Tensor, slots: Tensor, delta: Tensor) -> Tensor:
    """The merged output of the visual rows computed directly: ``softmax(S_V + merge)`` over each row's causal keys
    ``causal`` ``(B, m, L)``, times ``v`` ``(B, H, L, Dv)``: ``(B, H, m, Dv)``."""
    B, H, m, _ = s_v.shape
    bias = torch.zeros_like(s_v).scatter_add(-1, slots[:, None, None, :].expand(B, H, m, slots.shape[1]), delta)
    return torch.softmax((s_v + bias).masked_fill(~causal[:, None], float("-inf")), dim=-1) @ v  # (B, H, m, Dv)


#: below this merged normaliser (relative to the causal one) the closed-form correction would lose digits
_WELL_CONDITIONED = 1e-2
#: a causal normaliser below this (under the whole-row maximum) is recomputed directly
_TINY = {torch.float64: 1e-250, torch.float32: 1e-30, torch.float16: 1e-30, torch.bfloat16: 1e-30}


def sdpa_light_future_attention(q: Tensor, k: Tensor, v: Tensor, is_visual: Tensor, key_valid: Tensor,
                                slots: Tensor, *, mu: str, pool: str, pool_size: int, reduce: str,
                                merge_mode: str, scale: float) -> Tensor:
    """Light future-aware prefill attention: causal SDPA, then the visual rows corrected; see the module docstring."""
    B, H, L, _ = q.shape
    G = H // k.shape[1]
    pos = torch.arange(L, device=q.device)  # (L,)
    gqa = {"enable_gqa": True} if G > 1 else {}
    if bool(key_valid.all()):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **gqa)  # (B, H, L, Dv)
    else:  # padded keys: the boolean mask (the diagonal is kept, so no row is empty)
        allowed = ((pos[None, :] <= pos[:, None]) & key_valid[:, None, :]) | (pos[None, :] == pos[:, None])
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=scale, **gqa)
    merged = merge_terms(q, k.repeat_interleave(G, dim=1) if G > 1 else k, is_visual, key_valid, slots, mu=mu,
                         pool=pool, pool_size=pool_size, reduce=reduce, merge_mode=merge_mode, scale=scale)
    if merged is None:
        return out
    rows, delta, merges, s_v = merged
    m, p, Dv = rows.shape[1], slots.shape[1], v.shape[-1]
    causal = ((pos <= rows[..., None]) & key_valid[:, None, :]) | (pos == rows[..., None])  # (B, m, L)
    # the causal normaliser of each visual row, stabilised by its whole-row maximum (no masked copy of S_V)
    top = s_v.amax(-1, keepdim=True)  # (B, H, m, 1)
    e = torch.exp(s_v - top)  # (B, H, m, L)
    hidden = ~causal[:, None]  # (B, 1, m, L)
    e = e.masked_fill_(hidden, 0.0) if not e.requires_grad else e.masked_fill(hidden, 0.0)  # in place unless autograd needs e
    z = e.sum(-1, keepdim=True)  # (B, H, m, 1)
    s_slot = s_v.gather(-1, slots[:, None, None, :].expand(B, H, m, p))  # (B, H, m, p)
    # in log space, with z clamped, so that no branch (not even one the rows below replace) has a 0/0 or log(0):
    # autograd goes through both sides of a torch.where
    log_old = s_slot - top - torch.log(z.clamp_min(_TINY[s_v.dtype]))  # (B, H, m, p)
    old = torch.exp(log_old)  # (B, H, m, p): the slots' weights in the causal output
    log_new = log_old + delta  # (B, H, m, p): their merged weights, relative to the causal normaliser
    shift = log_new.amax(-1, keepdim=True).clamp_min(0.0)  # (B, H, m, 1)
    new = torch.exp(log_new - shift)  # (B, H, m, p)
    v_slot = v.gather(2, slots[:, None, :, None].expand(B, v.shape[1], p, Dv))  # (B, H_kv, p, Dv)
    if G > 1:
        v_slot = v_slot.repeat_interleave(G, dim=1)  # (B, H, p, Dv)
    idx = rows[:, None, :, None].expand(B, H, m, Dv)  # (B, H, m, Dv)
    o_v = out.gather(2, idx)  # (B, H, m, Dv): the causal output of the visual rows
    rest = torch.exp(-shift) * (1.0 - old.sum(-1, keepdim=True)).clamp_min(0.0)  # (B, H, m, 1): non-slot weight
    den = rest + new.sum(-1, keepdim=True)  # (B, H, m, 1)
    corrected = (torch.exp(-shift) * (o_v - old @ v_slot) + new @ v_slot) / den  # (B, H, m, Dv)
    # computed directly from S_V instead: rows whose merged normaliser is tiny (the merge takes nearly all the weight
    # away from the causal keys, and the difference above cancels), or whose causal normaliser or slot weight
    # underflowed under the whole-row maximum (a future score far above every causal one)
    hard = merges & (((shift == 0) & (den < _WELL_CONDITIONED)) | (z < _TINY[s_v.dtype])
                     | (old == 0).any(-1, keepdim=True))  # (B, H, m, 1)
    if bool(hard.any()):
        exact = _exact_rows(s_v, v.repeat_interleave(G, dim=1) if G > 1 else v, causal, slots, delta)
        corrected = torch.where(hard, exact, corrected)
    # add the change (0 for rows without a merge and for padding entries, which point at non-visual positions)
    change = torch.where(merges, corrected - o_v, 0.0)  # (B, H, m, Dv)
    return out + torch.zeros_like(out).scatter_add(2, idx, change)  # (B, H, L, Dv)
