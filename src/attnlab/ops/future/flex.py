"""Light future-aware attention on FlexAttention: the causal (and padding) ``BlockMask`` plus a ``score_mod`` that
adds each visual row's merge to its sink slots (spec ``future_mask.md`` 4.6).

Shape legend: B batch, H query heads, H_kv key/value heads, L sequence length, m visual query rows, p sink slots,
D head dim, Dv value dim.

The merge terms come from :func:`attnlab.ops.future.sdpa.merge_terms` (``q_V k^T`` over the ``m`` visual rows
only, ``O(m L)`` extra scores); they are scattered into ``c`` ``(B, H, L, p)`` (0 outside merging rows), and
``score_mod`` returns ``score + sum_t [kv == slots[b, t]] c[b, h, q, t]``. Unlike the SDPA form no ``(B, H, L, L)``
bias is materialised, and the kernel skips the blocks above the diagonal.

Execution as in :mod:`attnlab.ops.softmax.flex` (:func:`~attnlab.ops.softmax.flex.run_flex`): the compiled kernel on
CUDA (head dims below 16 zero-padded, exact since ``scale`` is explicit and ``score_mod`` does not depend on D; the
uncompiled FlexAttention for float64 and after a compile failure); on CPU torch runs FlexAttention eagerly and has
no backward, so inputs that require grad are refused there (``ValueError``). Inputs are assumed validated by
:func:`attnlab.ops.future.light_future_attention`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.ops.future.sdpa import merge_terms
from attnlab.ops.softmax.flex import run_flex  # the package's one way to call FlexAttention

__all__ = ["flex_light_future_attention"]


def flex_light_future_attention(q: Tensor, k: Tensor, v: Tensor, is_visual: Tensor, key_valid: Tensor,
                                slots: Tensor, *, mu: str, pool: str, pool_size: int, reduce: str,
                                merge_mode: str, scale: float) -> Tensor:
    """Light future-aware prefill attention via FlexAttention; see the module docstring."""
    from torch.nn.attention.flex_attention import create_block_mask

    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError(f"impl='flex' has no backward pass on CPU (torch {torch.__version__}); got inputs that "
                         "require grad: use impl='sdpa' or impl='reference', or call under torch.no_grad()")
    B, H, L, _ = q.shape
    G = H // k.shape[1]
    p = slots.shape[1]
    merged = merge_terms(q, k.repeat_interleave(G, dim=1) if G > 1 else k, is_visual, key_valid, slots, mu=mu,
                         pool=pool, pool_size=pool_size, reduce=reduce, merge_mode=merge_mode, scale=scale)
    c = torch.zeros(B, H, L, p, dtype=q.dtype, device=q.device)  # (B, H, L, p): the merge of each query row
    if merged is not None:
        rows, delta = merged.rows, merged.delta
        c = c.scatter_add(2, rows[:, None, :, None].expand(B, H, rows.shape[1], p), delta)

    def mask_mod(b: Tensor, h: Tensor, qi: Tensor, kv: Tensor) -> Tensor:
        return ((kv <= qi) & key_valid[b, kv]) | (kv == qi)  # causal, padded keys hidden, the diagonal kept

    def score_mod(score: Tensor, b: Tensor, h: Tensor, qi: Tensor, kv: Tensor) -> Tensor:
        for t in range(p):
            score = score + torch.where(kv == slots[b, t], c[b, h, qi, t], 0.0)
        return score

    block_mask = create_block_mask(mask_mod, B=B, H=None, Q_LEN=L, KV_LEN=L, device=q.device)
    if q.device.type == "cpu":  # torch refuses CPU inputs with requires_grad=True even under no_grad
        q, k, v, c = q.detach(), k.detach(), v.detach(), c.detach()
    return run_flex(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale, enable_gqa=G > 1)  # (B, H, L, Dv)
