"""Per-call token types for the LM: the future-aware vision-language masks inside attnlab's own model.

``LM(idx or inputs_embeds, token_types=TokenTypes(is_visual=..., kind=..., keep=..., semantics=...))`` runs every
layer's self-attention under ``token_types.mask`` (:mod:`attnlab.masks.vlm`, spec future_mask.md §2-§3) instead of
its causal mask, for that call only: nothing is stored in the model. The mask reaches each layer as the per-call
``mask=`` argument of :class:`~attnlab.layers.mha.MultiHeadAttention`; it replaces the causal mask, so only layers
whose own mask is exactly causal take it (``standard``, ``gqa``, ``mqa``, the Luong/Bahdanau scores, ...), and a
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

from typing import Any, Sequence

from torch import nn

from attnlab.layers.mha import MultiHeadAttention
from attnlab.masks import Mask
from attnlab.masks.vlm import TokenTypes

__all__ = ["check_token_types", "check_generate_token_types", "check_model_takes_masks", "with_mask"]


def check_model_takes_masks(blocks: Sequence[nn.Module], mechanisms: Sequence[str]) -> None:
    """Every layer must be multi-head softmax attention whose own mask is exactly causal (it takes the per-call
    future mask in its place)."""
    for i, (block, name) in enumerate(zip(blocks, mechanisms)):
        attn = block.attn
        own = getattr(attn, "mask", None)
        if not isinstance(attn, MultiHeadAttention) or not isinstance(own, Mask) or not own.plain_causal:
            raise ValueError(
                f"token_types needs every layer to be causal multi-head softmax attention (e.g. 'standard'), whose "
                f"causal mask the future mask replaces; layer {i + 1} uses {name!r}")


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
                      batch_size: int, offset: int, T: int, cached: bool) -> Mask:
    """Refuse a bad ``token_types`` for a call of ``T`` tokens at positions ``offset ..`` of ``batch_size`` rows
    (``cached``: with decoding caches); returns the mask every layer gets."""
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
    return token_types.mask


def with_mask(kwargs: dict[str, Any] | None, mask: Mask | None) -> dict[str, Any] | None:
    """A block's ``attn_kwargs`` plus the per-call ``mask`` (unchanged when there is none)."""
    if mask is None:
        return kwargs
    return {**(kwargs or {}), "mask": mask}
