"""Masked softmax attention through ``torch.nn.functional.scaled_dot_product_attention`` (SDPA).

Shape legend: B batch, H query heads, H_kv key/value heads (H % H_kv == 0), T query length, S key length,
D head dim, Dv value dim.

* Scores: ``scaled_dot`` and ``dot`` map to SDPA's ``scale`` argument; ``general`` first forms ``q' = q @ W``
  (``q W k^T = q' k^T``). ``additive`` cannot be expressed as SDPA and raises ``ValueError``.
* Masks: ``None`` or a ``full`` mask -> no mask. The ``is_causal=True`` fast path is used **only** when the
  mask is the plain causal mask, ``T == S`` and ``q_offset == 0``: SDPA's ``is_causal`` aligns the causal
  triangle to the top-left corner (query ``i`` sees keys ``j <= i``), which equals our absolute-position
  causal mask only when query row 0 is position 0 and there are as many keys as queries. Every other case gets
  a dense boolean mask from the predicate, ``(T, S)`` or ``(B, H, T, S)`` when the mask depends on batch/head.
* Rows with no visible key: depending on the kernel, SDPA returns NaN (or garbage) for an all-False row. Such
  rows are made all-visible before the call (so the kernel sees a well-defined softmax and the backward stays
  finite) and their outputs are set to zero afterwards, which also zeroes their gradients.
* GQA/MQA: SDPA's ``enable_gqa`` when this torch has it, else ``repeat_interleave`` of the key/value heads.
* Dropout: SDPA's own ``dropout_p`` (its random stream differs from the reference's ``F.dropout``).
* float16/bfloat16: SDPA's kernels accumulate in float32 themselves (no upcast here).
* NaN and inf at masked-out positions are **not** kept away from visible outputs (measured on CPU, torch 2.13,
  float32 and float64; CUDA kernels not measured): SDPA computes ``p @ v`` with ``p = 0`` at masked keys, and
  ``0 * NaN = NaN``, so a NaN or inf in one masked *value* makes every row that cannot see it NaN (all earlier
  rows for a future position, every row for a padded one). A non-finite masked *key* is harmless on the
  ``is_causal`` path (plain causal, ``T == S``, ``q_offset == 0``); with a dense mask it is not, because the
  boolean mask is applied as an additive ``-inf`` (``NaN + -inf = NaN``, ``inf + -inf = NaN``): a NaN key made
  every row that cannot see it NaN, an inf key about half of them. The reference backend sums visible positions
  only and is immune; :class:`~attnlab.layers.mha.MultiHeadAttention` zeroes padded keys and values of a
  ``key_padding`` mask before calling any backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.masks import dense
from attnlab.ops.softmax.args import SoftmaxArgs
from attnlab.ops.softmax.scores import GeneralScoreParams

__all__ = ["sdpa_softmax_attention", "SDPA_SCORES"]

SDPA_SCORES: tuple[str, ...] = ("scaled_dot", "dot", "general")


def _sdpa_has_enable_gqa() -> bool:
    """SDPA gained ``enable_gqa`` in torch 2.5."""
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 5)


_HAS_ENABLE_GQA = _sdpa_has_enable_gqa()


def sdpa_softmax_attention(q: Tensor, k: Tensor, v: Tensor, args: SoftmaxArgs) -> Tensor:
    """Masked softmax attention via SDPA; see the module docstring. Inputs are assumed validated."""
    mask, scale, score, score_params, q_offset, dropout_p = (
        args.mask, args.scale, args.score, args.score_params, args.q_offset, args.dropout_p)
    if score not in SDPA_SCORES:
        raise ValueError(f"impl='sdpa' does not support score={score!r}; it supports {SDPA_SCORES}")
    B, H, T, _ = q.shape
    Hkv, S = k.shape[1], k.shape[2]

    if score == "general":
        assert isinstance(score_params, GeneralScoreParams)
        q = torch.einsum("bhtd,hde->bhte", q, score_params.weight)  # (B, H, T, D)  q' = q W

    gqa_kwargs: dict[str, bool] = {}
    if Hkv != H:
        if _HAS_ENABLE_GQA:
            gqa_kwargs["enable_gqa"] = True
        else:  # pragma: no cover - torch < 2.5
            k = k.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, D)
            v = v.repeat_interleave(H // Hkv, dim=1)  # (B, H, S, Dv)

    if mask is None or mask.full:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale, **gqa_kwargs)
    if mask.plain_causal and T == S and q_offset == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, **gqa_kwargs)

    if mask.per_batch or mask.per_head:
        allowed = dense(mask, T, S, batch_size=B, n_heads=H, q_offset=q_offset, device=q.device)  # (B, H, T, S)
    else:
        allowed = dense(mask, T, S, q_offset=q_offset, device=q.device)  # (T, S)
    has_key = allowed.any(dim=-1, keepdim=True)  # (..., T, 1)
    safe = allowed | ~has_key  # empty rows become all-visible: finite softmax, output zeroed below
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, dropout_p=dropout_p, scale=scale, **gqa_kwargs)
    return out.masked_fill(~has_key, 0.0)  # (B, H, T, Dv)
