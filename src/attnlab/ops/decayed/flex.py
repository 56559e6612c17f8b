"""Windowed decayed attention through FlexAttention: the window as a ``BlockMask``, the decay and the relative
table as a ``score_mod`` (the :class:`DecayScoreMod` object itself, called per score under ``vmap``).

Shape legend: B batch, H heads, T query length, S key length, D head dim, Dv value dim.

The BlockMask comes from :func:`attnlab.ops.softmax.flex.block_mask_for` (cached, shifted by ``q_offset``).
Execution as in :mod:`attnlab.ops.softmax.flex` (:func:`~attnlab.ops.softmax.flex.run_flex`): the compiled kernel
on CUDA (head dims below 16 zero-padded, the uncompiled FlexAttention for float64 and after a compile failure); on
CPU torch 2.13 runs FlexAttention eagerly and has **no backward**, so a CPU call whose inputs (or ``gamma``, or
the relative table) require grad raises ``ValueError``. A float64 CUDA call whose ``gamma`` requires grad raises
too: FlexAttention runs uncompiled in float64, and on the H200 its uncompiled backward failed for a 0-dim score_mod
tensor that requires grad (``benchmarks/gpu/probe_flex_eager.py``; a captured table indexed per score, as the
relative table is, differentiates fine there). The same failure would meet a float32 call that falls back to the
uncompiled FlexAttention after a compile failure (not guarded: the fallback warns). CPU tests cover the forward
pass in float64, gradients are tested in the GPU tier. ``scale`` is always passed explicitly and the score_mod does
not depend on D, so the padding is exact.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from attnlab.masks import Mask
from attnlab.ops.decayed.score_mod import DecayScoreMod
from attnlab.ops.softmax.flex import block_mask_for, run_flex

__all__ = ["flex_decayed_attention"]

def flex_decayed_attention(q: Tensor, k: Tensor, v: Tensor, *, mask: Mask, mod: DecayScoreMod,
                           scale: float) -> Tensor:
    """FlexAttention with ``score_mod=mod`` and the window's BlockMask; see the module docstring."""
    tensors = [q, k, v, mod.gamma] + ([mod.rel] if mod.rel is not None else [])
    if (q.device.type == "cuda" and q.dtype == torch.float64 and torch.is_grad_enabled()
            and mod.gamma.requires_grad):
        raise ValueError("impl='flex' cannot differentiate gamma in float64 on CUDA: FlexAttention runs uncompiled in "
                         "float64, and its uncompiled backward fails for a 0-dim score_mod tensor that requires grad "
                         "(measured on the H200 with torch 2.11: benchmarks/gpu/probe_flex_eager.py). Use "
                         "impl='banded', 'dense' or 'reference' (impl='auto' does), or detach gamma")
    if q.device.type == "cpu":
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            raise ValueError(f"impl='flex' has no backward pass on CPU (torch {torch.__version__}); got inputs that "
                             "require grad. Use impl='banded', 'reference' or 'sdpa', or call under torch.no_grad()")
        q, k, v = q.detach(), k.detach(), v.detach()
        mod = replace(mod, gamma=mod.gamma.detach(), rel=None if mod.rel is None else mod.rel.detach())
    B, H, T, _ = q.shape
    block_mask = block_mask_for(mask, batch_size=B, n_heads=H, q_len=T, kv_len=k.shape[2], q_offset=mod.q_offset,
                                device=q.device)
    return run_flex(q, k, v, score_mod=mod, block_mask=block_mask, scale=scale)  # (B, H, T, Dv)
