"""Key-padding masks: batches of sequences of different lengths, padded to one length.

Convention (``j`` = absolute key position ``kv_idx``, ``b`` = batch row): ``key_padding(valid)`` lets every query
see key ``j`` of row ``b`` iff ``valid[b, j]``; keys at ``j >= S`` (beyond the ``valid`` tensor) are padding too.
The query position plays no part, so the same mask serves self-attention (a padded encoder input) and
cross-attention (decoder queries attending to a padded source). A row whose keys are all padding sees nothing,
and attention gives it zeros (never NaN).

Combine with a layer's own pattern through ``&`` (``causal() & key_padding(valid)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.masks.core import Mask

__all__ = ["key_padding"]


def key_padding(valid: Tensor) -> Mask:
    """Hide padded keys: key ``j`` of batch row ``b`` is visible to every query iff ``valid[b, j]``.

    Args:
        valid: ``torch.bool``, ``(B, S)`` (one row per batch element) or ``(S,)`` (shared by the batch); ``True``
            at real positions, ``False`` at padding. Positions ``>= S`` count as padding.

    Returns:
        A :class:`Mask` with ``per_batch`` for a ``(B, S)`` input, named ``key_padding(B=.., S=.., n_pad=..)``, and
        ``key_valid=valid`` (the padded keys are hidden from every query), which lets attention layers zero the
        padded keys and values so that whatever they hold (NaN, inf) cannot reach a real position.
    """
    if not isinstance(valid, Tensor):
        raise ValueError(f"valid must be a torch.bool tensor of shape (B, S) or (S,), got {type(valid).__name__}")
    if valid.dtype != torch.bool or valid.ndim not in (1, 2) or valid.shape[-1] < 1 or valid.numel() < 1:
        raise ValueError(
            f"valid must be a torch.bool tensor of shape (B, S) or (S,) with B, S >= 1, got {valid.dtype} "
            f"{tuple(valid.shape)}"
        )
    per_batch = valid.ndim == 2
    rows = valid if per_batch else valid.unsqueeze(0)  # (B or 1, S)
    S = rows.shape[1]
    on_device: dict[str, Tensor] = {}

    def fn(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        key = str(kv.device)
        if key not in on_device:
            on_device[key] = rows.to(kv.device)
        r = on_device[key]
        bb = b if per_batch else torch.zeros_like(b)
        inside = kv < S
        return r[bb, kv.clamp(0, S - 1)] & inside  # broadcast(b, kv): keys beyond S are padding

    n_pad = int((~rows).sum())
    shape = f"B={rows.shape[0]}, S={S}" if per_batch else f"S={S}"
    name = f"key_padding({shape}, n_pad={n_pad})"
    return Mask(name=name, fn=fn, per_batch=per_batch, key_valid=valid)
