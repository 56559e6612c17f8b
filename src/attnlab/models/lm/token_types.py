"""Per-call token types for the LM: the future-aware vision-language masks inside attnlab's own model.

``LM(idx or inputs_embeds, token_types=TokenTypes(is_visual=..., kind=..., keep=..., semantics=...))`` runs every
layer's self-attention under ``token_types.mask`` (:mod:`attnlab.masks.vlm`, spec future_mask.md §2-§3) instead of
its causal mask, for that call only: nothing is stored in the model. Each layer gets it in one of two ways:

* a layer whose class declares ``token_inputs = ("is_visual", "key_valid")`` (``future-light``, the light
  future-aware merge of spec §4) gets the token types themselves: ``is_visual`` for the call's positions (``None`` once every position of the call lies
  beyond ``L``, i.e. in decoding) and ``key_valid`` = ``keep`` extended with ``True`` over every key of the call
  (``None`` without ``keep``). Its own config chooses its future region; ``kind`` and ``semantics`` do not reach it.
* any other layer gets ``token_types.mask`` as the per-call ``mask=`` of
  :class:`~attnlab.layers.mha.MultiHeadAttention`, in place of its causal mask; so it must be multi-head softmax
  attention whose own mask is exactly causal (``standard``, ``gqa``, ``mqa``, the Luong/Bahdanau scores, ...). A
  model with any other layer (sliding window, CASTLE, linear, the deconstructed variants) refuses ``token_types``.

Visual positions are given as embeddings: pass ``inputs_embeds`` with image features at the ``is_visual``
positions (the LM has no vision encoder). Token types are absolute positions: ``is_visual[b, j]`` types position
``j`` of row ``b``, and every position ``>= L`` (generated tokens) is text.

Cached decoding (``caches=``): under semantics P the first call (the prefill) must hold all ``L`` typed positions;
later calls (one generated token at a time) are text rows and see every cached key, which equals recomputing the
whole sequence under the P mask. Semantics R with ``kind="f"`` or ``"v2t"`` lets visual rows see generated tokens,
so no cache can reproduce it: such calls must recompute the whole sequence (``caches=None``); ``kind="v2v"`` under
R coincides with P and may be cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from attnlab.layers.mha import MultiHeadAttention
from attnlab.masks import Mask
from attnlab.masks.vlm import TokenTypes

__all__ = ["CallTypes", "check_token_types", "check_generate_token_types", "check_model_takes_masks",
           "takes_token_types", "with_types"]



def takes_token_types(layer: nn.Module) -> bool:
    """Whether ``layer`` takes ``is_visual=`` and ``key_valid=`` itself, instead of a per-call mask: its class
    declares them in ``token_inputs`` (the per-call inputs a model passes in the block's ``attn_kwargs``)."""
    return {"is_visual", "key_valid"} <= set(getattr(type(layer), "token_inputs", ()))


@dataclass(frozen=True)
class CallTypes:
    """What the layers of one LM call get: ``mask`` (mask-taking layers) or ``is_visual``/``key_valid`` (layers
    that take token types); see the module docstring."""

    mask: Mask | None  # None: the layers' own causal mask is exactly the future mask's rows of this call
    is_visual: Tensor | None
    key_valid: Tensor | None


def _extend(t: Tensor, n: int, value: bool) -> Tensor:
    """``t`` ``(..., L)`` cut or padded with ``value`` to ``(..., n)``."""
    L = t.shape[-1]
    if n <= L:
        return t[..., :n]
    return torch.cat([t, torch.full((*t.shape[:-1], n - L), value, dtype=torch.bool, device=t.device)], dim=-1)



def check_model_takes_masks(blocks: Sequence[nn.Module], mechanisms: Sequence[str]) -> None:
    """Every layer must take token types itself, or be multi-head softmax attention whose own mask is exactly causal
    (it takes the per-call future mask in its place)."""
    for i, (block, name) in enumerate(zip(blocks, mechanisms)):
        attn = block.attn
        own = getattr(attn, "mask", None)
        if takes_token_types(attn):
            continue
        if not isinstance(attn, MultiHeadAttention) or not isinstance(own, Mask) or not own.plain_causal:
            raise ValueError(
                f"token_types needs every layer to be causal multi-head softmax attention (e.g. 'standard'), whose "
                f"causal mask the future mask replaces, or to take is_visual= itself ('future-light'); layer {i + 1} "
                f"uses {name!r}")


def _check_type(token_types: object) -> TokenTypes:
    if not isinstance(token_types, TokenTypes):
        raise ValueError(f"token_types must be an attnlab.masks.TokenTypes or None, got {type(token_types).__name__}")
    return token_types


def _refuse_cache(token_types: TokenTypes, fix: str) -> None:
    if token_types.needs_recompute:
        raise ValueError(
            f"token_types with semantics='R' and kind={token_types.kind!r} lets visual rows see generated tokens, "
            f"which no cache can reproduce: recompute the whole sequence ({fix}), or use semantics='P'")


def check_generate_token_types(token_types: object, *, prompt_len: int, max_new_tokens: int, context_len: int,
                               use_cache: bool) -> None:
    """Refuse ``token_types`` that :func:`~attnlab.models.lm.generate.generate` cannot honour: positions must stay
    absolute (no context restart), and semantics R with ``M^f``/``M^v2t`` needs ``use_cache=False``."""
    tt = _check_type(token_types)
    if prompt_len + max_new_tokens > context_len:
        raise ValueError(f"token_types needs absolute positions: prompt {prompt_len} + max_new_tokens={max_new_tokens} "
                         f"must fit context_len={context_len} (no context restart)")
    if use_cache:
        _refuse_cache(tt, "use_cache=False")


def check_token_types(token_types: object, *, blocks: Sequence[nn.Module], mechanisms: Sequence[str],
                      batch_size: int, offset: int, T: int, cached: bool) -> CallTypes:
    """Refuse a bad ``token_types`` for a call of ``T`` tokens at positions ``offset ..`` of ``batch_size`` rows
    (``cached``: with decoding caches); returns what the layers get."""
    token_types = _check_type(token_types)
    check_model_takes_masks(blocks, mechanisms)
    B = token_types.batch_size
    if B is not None and B != batch_size:
        raise ValueError(f"token_types has batch size {B} (is_visual/keep rows) but the input has B={batch_size}")
    L = token_types.length
    if offset + T < L:
        raise ValueError(f"token_types types L={L} positions but the input ends at position {offset + T} "
                         f"(cached {offset} + T={T}); the first call (prefill) must hold every typed position")
    if cached:
        _refuse_cache(token_types, "caches=None")
    end = offset + T
    vis = None if offset >= L else _extend(token_types.is_visual, end, False)[..., offset:]  # (B or -, T)
    keep = token_types.keep
    # A call wholly beyond the typed prompt (decoding) has only generated, i.e. text, query rows: under every kind and
    # semantics they see exactly the earlier valid keys, so without padding the layers' own causal mask is the same
    # mask, and their native causal path saves building a dense mask row per step.
    mask = None if offset >= L and keep is None else token_types.mask
    return CallTypes(mask=mask, is_visual=vis, key_valid=None if keep is None else _extend(keep, end, True))


def with_types(kwargs: dict[str, Any] | None, layer: nn.Module, call: CallTypes | None) -> dict[str, Any] | None:
    """A block's ``attn_kwargs`` plus what ``layer`` gets from ``call`` (unchanged without token types)."""
    if call is None:
        return kwargs
    if takes_token_types(layer):
        return {**(kwargs or {}), "is_visual": call.is_visual, "key_valid": call.key_valid}
    return kwargs if call.mask is None else {**(kwargs or {}), "mask": call.mask}
