"""Masked softmax attention through FlexAttention (``torch.nn.attention.flex_attention``).

Shape legend: B batch, H query heads, H_kv key/value heads (H % H_kv == 0), T query length, S key length,
D head dim, Dv value dim.

* The mask predicate becomes a ``BlockMask`` (``create_block_mask``), shifted so that query row ``i`` is
  evaluated at ``q_idx = q_offset + i``. Blocks with no visible entry are skipped by the kernel, so sparse
  masks (sliding window, strided, fixed, BigBird, documents) cost roughly their density. BlockMasks are cached
  by ``(mask object, T, S, q_offset, device, B if per-batch, H if per-head, flex_block)``; the cache keeps a
  reference to the mask so an ``id`` cannot be reused while cached.
* ``flex_block``: the side of FlexAttention's square blocks (torch's ``BLOCK_SIZE``; default 128), the
  granularity at which empty parts of the mask are skipped. Named so as not to be confused with CASTLE's
  ``chunk_size`` or a model's context length.
* Scores: ``scaled_dot`` / ``dot`` via ``scale``; ``general`` via ``q' = q @ W``. ``additive`` is not offered
  (it would need a per-element ``tanh`` over ``A`` inside ``score_mod``) and raises ``ValueError``.
* Rows with no visible key: FlexAttention returns zeros for them (its log-sum-exp is ``-inf``); tested
  against the reference on CPU and, in the GPU tier, on CUDA.
* Dropout is not supported by FlexAttention: ``dropout_p > 0`` raises ``ValueError``.
* NaN and inf at masked-out positions (measured on CPU, torch 2.13, eager; the compiled CUDA kernel not measured):
  a non-finite masked *key* never reaches a visible output (the ``mask_mod`` replaces its score), but a non-finite
  masked *value* does: ``p @ v`` multiplies its zero probability by it (``0 * NaN = NaN``), and the eager CPU path
  does this for every block, so one NaN value made every row that cannot see it NaN (T=256: all 200 earlier rows,
  also those of the fully masked block the kernel would skip on CUDA). The reference backend is immune, and
  :class:`~attnlab.layers.mha.MultiHeadAttention` zeroes padded keys and values of a ``key_padding`` mask first.
* Execution: on CUDA the ``torch.compile``-d kernel. On CPU, torch 2.13 runs FlexAttention eagerly (an unfused
  implementation that materialises the scores; its "called without torch.compile" warning is silenced here)
  and **has no CPU backward**: calling it on CPU with inputs that require grad raises ``ValueError`` here
  rather than torch's ``NotImplementedError`` deep inside. CPU tests therefore cover the forward pass and the
  BlockMask; gradients are tested in the GPU tier.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import Tensor

from attnlab._validation import check_int
from attnlab.masks import Mask
from attnlab.ops.softmax.args import SoftmaxArgs
from attnlab.ops.softmax.scores import GeneralScoreParams

__all__ = ["flex_softmax_attention", "block_mask_for", "FLEX_SCORES", "clear_block_mask_cache"]

FLEX_SCORES: tuple[str, ...] = ("scaled_dot", "dot", "general")
DEFAULT_FLEX_BLOCK = 128
_CACHE_SIZE = 64

_cache: "OrderedDict[tuple[Any, ...], tuple[Mask, Any]]" = OrderedDict()
_cache_lock = threading.Lock()
_compiled: Callable[..., Tensor] | None = None


def clear_block_mask_cache() -> None:
    """Forget every cached BlockMask."""
    with _cache_lock:
        _cache.clear()


def block_mask_for(
    mask: Mask,
    *,
    batch_size: int,
    n_heads: int,
    q_len: int,
    kv_len: int,
    q_offset: int = 0,
    device: torch.device | str = "cpu",
    flex_block: int = DEFAULT_FLEX_BLOCK,
):
    """The (cached) FlexAttention ``BlockMask`` of ``mask`` for query rows at ``q_offset .. q_offset + q_len``.

    The BlockMask broadcasts over batch/heads unless the mask depends on them (``per_batch``/``per_head``);
    its blocks are ``flex_block x flex_block`` (query x key positions).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    check_int("flex_block", flex_block, 1)
    dev = torch.device(device)
    B = batch_size if mask.per_batch else None
    H = n_heads if mask.per_head else None
    key = (id(mask), q_len, kv_len, q_offset, str(dev), B, H, flex_block)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] is mask:
            _cache.move_to_end(key)
            return hit[1]

    fn = mask.fn
    if q_offset:
        off = q_offset

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return fn(b, h, q_idx + off, kv_idx)

    else:

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            return fn(b, h, q_idx, kv_idx)

    bm = create_block_mask(mask_mod, B=B, H=H, Q_LEN=q_len, KV_LEN=kv_len, device=dev, BLOCK_SIZE=flex_block)
    with _cache_lock:
        _cache[key] = (mask, bm)
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return bm


#: Dynamo's recompile limit while FlexAttention is compiled: every mask function (and each grad mode) is a new graph
#: of the one compiled ``flex_attention``, and at torch's default of 8 the ninth falls back to the eager, unfused
#: FlexAttention, which materialises the scores (seen on an H200: the sparsity suite's 13 masks stalled).
FLEX_RECOMPILE_LIMIT = 256


def raise_recompile_limit(limit: int = FLEX_RECOMPILE_LIMIT) -> None:
    """Raise (never lower) dynamo's per-function recompile limit, and the accumulated one, to at least ``limit``."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name) and isinstance(getattr(cfg, name), int) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)


def compiled_flex() -> Callable[..., Tensor]:
    """The package's one ``torch.compile``-d FlexAttention (CUDA), with the recompile limit raised."""
    global _compiled
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled is None:
        raise_recompile_limit()
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


def _flex_fn(device: torch.device) -> Callable[..., Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return compiled_flex() if device.type == "cuda" else flex_attention


def flex_softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, args: SoftmaxArgs, *, flex_block: int = DEFAULT_FLEX_BLOCK
) -> Tensor:
    """Masked softmax attention via FlexAttention; see the module docstring. Inputs are assumed validated."""
    mask, scale, score, score_params, q_offset, dropout_p = (
        args.mask, args.scale, args.score, args.score_params, args.q_offset, args.dropout_p)
    if score not in FLEX_SCORES:
        raise ValueError(f"impl='flex' does not support score={score!r}; it supports {FLEX_SCORES}")
    if dropout_p > 0.0:
        raise ValueError(f"impl='flex' does not support dropout, got dropout_p={dropout_p}; use impl='sdpa'")
    grads = [t for t in (q, k, v) if t.requires_grad]
    if score_params is not None:
        grads += [t for t in score_params.tensors().values() if t.requires_grad]
    if q.device.type == "cpu" and torch.is_grad_enabled() and grads:
        raise ValueError(
            "impl='flex' has no backward pass on CPU (FlexAttention in torch "
            f"{torch.__version__} implements CPU forward only); got inputs that require grad. "
            "Use impl='sdpa' or impl='reference', or call under torch.no_grad()"
        )
    if q.device.type == "cpu" and not torch.is_grad_enabled():
        # torch refuses CPU inputs with requires_grad=True even under no_grad; nothing is recorded anyway
        q, k, v = q.detach(), k.detach(), v.detach()
        if score_params is not None:
            score_params = GeneralScoreParams(weight=score_params.weight.detach())  # type: ignore[union-attr]
    B, H, T, _ = q.shape
    Hkv, S = k.shape[1], k.shape[2]

    if score == "general":
        assert isinstance(score_params, GeneralScoreParams)
        q = torch.einsum("bhtd,hde->bhte", q, score_params.weight)  # (B, H, T, D)  q' = q W

    block_mask = None
    if mask is not None and not mask.full:
        block_mask = block_mask_for(
            mask, batch_size=B, n_heads=H, q_len=T, kv_len=S, q_offset=q_offset, device=q.device,
            flex_block=flex_block,
        )
    fn = _flex_fn(q.device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        out = fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=Hkv != H)
    return out  # (B, H, T, Dv)
