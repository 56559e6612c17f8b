"""Argument checks of :class:`~attnlab.layers.mha.MultiHeadAttention` calls: everything ``forward`` refuses, refused
before any matmul and before a cache is updated (a refusal after ``cache.update`` would leave the cache advanced
past tokens that were never attended)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from attnlab._validation import check_layer_context, check_layer_input
from attnlab.cache.kv import KVCache, SlidingKVCache
from attnlab.masks import Mask
from attnlab.ops.softmax.flex import FLEX_SCORES as _FLEX_SCORES
from attnlab.ops.softmax.sdpa import SDPA_SCORES as _SDPA_SCORES

# ``layer`` below is a :class:`~attnlab.layers.mha.MultiHeadAttention` (typed Any: this module sits below it)

__all__ = ["check_call", "check_context_kv", "check_no_future_key"]


def check_context_kv(layer: Any, context_kv: object, batch_size: int) -> int:
    """``context_kv`` must be ``(k, v)`` from :meth:`project_context` for ``batch_size`` rows; returns ``S``."""
    w = layer.in_proj.weight
    Hkv, D = layer.n_kv_heads, layer.head_dim
    if not (isinstance(context_kv, (tuple, list)) and len(context_kv) == 2
            and all(isinstance(t, Tensor) for t in context_kv)):
        raise ValueError(
            f"context_kv must be a pair (k, v) of tensors from project_context(), got {type(context_kv).__name__}")
    k, v = context_kv
    want = f"(B={batch_size}, H_kv={Hkv}, S >= 1, D={D})"
    for name, t in (("k", k), ("v", v)):
        if t.ndim != 4 or t.shape[0] != batch_size or t.shape[1] != Hkv or t.shape[3] != D or t.shape[2] < 1:
            raise ValueError(f"context_kv {name} must have shape {want}, got {tuple(t.shape)}")
        if t.dtype != w.dtype or t.device != w.device:
            raise ValueError(f"context_kv {name} must have the layer's dtype {w.dtype} and device {w.device}, "
                             f"got {t.dtype} on {t.device}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"context_kv k and v must have the same length S, got {k.shape[2]} and {v.shape[2]}")
    return int(k.shape[2])

def check_call(layer: Any, x: object, context: object, cache: object, mask: object,
               context_kv: object = None) -> None:
    """Refuse a bad ``forward`` call before any matmul and before the cache is updated."""
    d = layer.d_model
    w = layer.in_proj.weight
    x = check_layer_input(x, d_model=d, reference_param=None)
    # this layer's own wording for dtype/device (tested in tests/layers/test_mha.py)
    if x.dtype != w.dtype:
        raise ValueError(f"x dtype {x.dtype} does not match the layer's parameters ({w.dtype})")
    if x.device != w.device:
        raise ValueError(f"x is on {x.device} but the layer's parameters are on {w.device}")
    if mask is not None and not isinstance(mask, Mask):
        raise ValueError(f"mask must be an attnlab.masks.Mask, a mask_mod callable or None, got {type(mask).__name__}")
    if context is not None and context_kv is not None:
        raise ValueError("pass at most one of context (B, S, d_model) and context_kv=(k, v), not both")
    n_context: int | None = None
    if context_kv is not None:
        n_context = check_context_kv(layer, context_kv, x.shape[0])
        if cache is not None:
            raise ValueError("cache is not supported together with context_kv (cross-attention)")
    elif context is None:
        if layer.cross:
            raise ValueError(
                "this is a cross-attention layer (cross=True): forward needs context=(B, S, d_model) "
                "or context_kv=(k, v) from project_context()")
    else:
        context = check_layer_context(context, d_model=d, batch_size=x.shape[0])
        if context.dtype != w.dtype or context.device != w.device:
            raise ValueError(
                f"context must have the layer's dtype {w.dtype} and device {w.device}, "
                f"got {context.dtype} on {context.device}"
            )
        if cache is not None:
            raise ValueError("cache is not supported together with context (cross-attention)")
        n_context = context.shape[1]
    # what softmax_attention would refuse, refused here: before any matmul and before the cache is updated
    # (a refusal after ``cache.update`` would leave the cache advanced past tokens that were never attended)
    impl = layer._impl
    if impl == "sdpa" and layer.score not in _SDPA_SCORES:
        raise ValueError(f"impl='sdpa' does not support score={layer.score!r}; it supports {_SDPA_SCORES}")
    if impl == "flex":
        if layer.score not in _FLEX_SCORES:
            raise ValueError(f"impl='flex' does not support score={layer.score!r}; it supports {_FLEX_SCORES}")
        if layer.training and layer.dropout > 0:
            raise ValueError(
                f"impl='flex' does not support dropout, got dropout_p={layer.dropout}; use impl='sdpa'")
    m_eff = (layer.mask if mask is None else mask) if n_context is None else mask
    if m_eff is not None and m_eff.max_len is not None:
        q_end = x.shape[1] + (0 if cache is None else cache.seq_len)
        n_keys = q_end if n_context is None else n_context
        if q_end > m_eff.max_len or n_keys > m_eff.max_len:
            raise ValueError(
                f"mask {m_eff.name} is defined for positions < max_len={m_eff.max_len}, got query positions "
                f"up to q_offset + T = {q_end} and S={n_keys} keys"
            )
    if cache is None:
        return
    if not isinstance(cache, (KVCache, SlidingKVCache)):
        raise ValueError(
            f"cache must be a KVCache or SlidingKVCache from layer.new_cache(), got {type(cache).__name__}"
        )
    cache.check_compatible(batch_size=x.shape[0], n_kv_heads=layer.n_kv_heads, head_dim=layer.head_dim,
                           v_head_dim=layer.head_dim, dtype=w.dtype, device=w.device)
    m = layer.mask if mask is None else mask
    if m is None or m.full:
        raise ValueError(f"cached decoding needs a causal or prefix mask, got mask={m}")
    if isinstance(cache, SlidingKVCache) and not (m.causal and m.window is not None and m.window <= cache.window):
        raise ValueError(
            f"SlidingKVCache(window={cache.window}) keeps too few keys for mask {m} "
            f"(needs a causal mask with window <= {cache.window}); use KVCache"
        )
    if not m.causal:
        check_no_future_key(layer, m, cache.seq_len, x.shape[1], x.shape[0], x.device)

def check_no_future_key(layer: Any, m: Mask, offset: int, T: int, B: int, device: torch.device) -> None:
    """Refuse a cached call whose queries could see the next position, which is not in the cache yet."""
    nxt = offset + T
    if m.max_len is not None and nxt >= m.max_len:
        return  # no later position exists
    b = torch.arange(B if m.per_batch else 1, device=device).view(-1, 1, 1, 1)
    h = torch.arange(layer.n_heads if m.per_head else 1, device=device).view(1, -1, 1, 1)
    q = torch.arange(offset, nxt, device=device).view(1, 1, T, 1)
    kv = torch.full((1, 1, 1, 1), nxt, device=device)
    if bool(torch.as_tensor(m(b, h, q, kv)).any()):
        raise ValueError(
            f"mask {m} lets queries at positions [{offset}, {nxt}) see position {nxt}, which a later call "
            f"would bring: cached output would differ from the parallel one. Prefill up to where the mask "
            f"becomes causal in one call (for prefix_lm(p): the first call must contain >= p tokens)"
        )
