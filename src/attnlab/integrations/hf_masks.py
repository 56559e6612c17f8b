"""attnlab's masks inside stock Hugging Face models: ``attn_implementation="attnlab-strided"`` (for example).

:func:`register_hf_attention` registers an attnlab :class:`~attnlab.masks.Mask` (or any FlexAttention-style
``mask_mod``) under a name in transformers' two registries: ``AttentionMaskInterface`` (the mask a model's
``create_causal_mask`` builds: transformers' ``sdpa_mask`` with the attnlab predicate in place of the causal one, or
AND-ed with it for a causal mask (packed sequences below), the 2-D padding mask AND-ed in by transformers, never
skipped for ``is_causal``) and ``AttentionInterface`` (transformers' own SDPA attention function, which then applies
that boolean mask). A stock model loaded or configured with ``attn_implementation=name`` then runs with the mask in
training and in ``generate()`` alike: positions are absolute (``q_idx`` counts the cached tokens), as attnlab's masks
expect.

Importing this module (or :mod:`attnlab.integrations.hf`) registers ``"attnlab-<mechanism>"`` for every registered
mask-based softmax mechanism with its default options (:data:`DEFAULT_NAMES`: ``attnlab-sliding-window``,
``attnlab-strided``, ``attnlab-fixed``, ``attnlab-prefix-lm`` and the others whose default mask is the same for
every head); other options: ``register_hf_attention("my-window", attnlab.masks.sliding_window(128))``.

Packed sequences through transformers' own detection (``position_ids`` restarting at 0, no cache and no 2-D
``attention_mask``: ``create_causal_mask`` then asks for causal AND "same sequence"). A **causal** mask
(``Mask.causal``) is AND-ed with the mask transformers asks for, both on absolute positions in the row: such a call
runs ``mask & document(ids) & causal()`` (the pattern counted from the row's start, not from each sequence's, as in
attnlab's own packed training), and every other call (transformers asks for plain causal there) runs the mask
unchanged. A **non-causal** mask (prefix-LM, or a bare ``mask_mod`` callable: wrap it as ``Mask(..., causal=True)``
when it is causal) replaces transformers' mask, because AND-ing a causal one would break it; a packed call is then
refused (``ValueError``): found by the one mark a sequence boundary leaves, key ``q - 1`` hidden from query ``q``,
checked on calls without a cache offset and without a padding mask (never under ``torch.compile``, where the check
cannot run and the mask is replaced as before). With a padding mask, transformers' detection is off and each row is
one sequence, whatever the masks.

``attnlab-documents`` (also registered on import) is attnlab's packed-sequence mask, ``document(ids) & causal()``,
with the documents read from each call, so that they may differ per batch row and per call. **Contract: the
``position_ids`` input carries the documents**, in transformers' own packed-sequence convention: they restart at 0
where a document starts and count up by one inside it (e.g. ``[0, 1, 2, 0, 1, 0, 1, 2, 3]`` packs documents of 3, 2
and 4 tokens). Query ``i`` (absolute index, cached tokens counted) then sees exactly the keys ``j`` with
``i - position_ids[i] <= j <= i``: causal inside its document, nothing of another one (:func:`documents_mask`). RoPE
takes the same restarting positions, so each document is encoded as if it were alone. Why ``position_ids``: they are
the one per-token input that reaches every attention call, in a full forward and at every cached ``generate()``
step alike (transformers' mask functions receive only lengths, offsets and the 2-D padding mask; its own packed
detection runs only without a cache and without a padding mask), and ``generate(position_ids=...)`` extends them by
``last + 1`` per new token, so decoding continues the last document. Pass them to every call: a call without them
gets the model's default positions ``0, 1, 2, ...`` from the start of the sequence, i.e. one document (the plain
causal mask). A ``position_ids`` value larger than its token's index means a document that started before the
sequence (every earlier key visible); negative values are refused. It needs the keys of every earlier token: no
cache or a dynamic cache (transformers' default), not a static or sliding-window cache (refused).

Masks that differ per head (BigBird with per-head random links) cannot be expressed in transformers' ``(B, 1, T, S)``
masks and are refused. ``transformers`` is imported here (``pip install 'attnlab[hf]'``).

Shapes: B batch, H heads, T query length, S key length, D head dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, and_masks, sdpa_mask

from attnlab.masks import Mask, as_mask, causal, dense
from attnlab.masks.core import MaskFn

__all__ = ["register_hf_attention", "registered", "documents_mask", "DOCUMENTS", "DEFAULT_NAMES"]

#: the transformers attention implementation of attnlab's packed-sequence mask (module docstring)
DOCUMENTS = "attnlab-documents"

_REGISTERED: dict[str, Mask] = {}


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in ("sdpa", "eager", "flex_attention") or name.startswith("flash_attention"):
        raise ValueError(f"name={name!r} is one of transformers' own implementations; pick another (e.g. "
                         f"'attnlab-{name}')")


def _refuse_local_layers(name: str, kwargs: dict[str, Any]) -> None:
    """A model layer with its own sliding window or chunks (transformers passes ``local_size``, e.g. Mistral's
    ``sliding_window``) would silently lose it under attnlab's mask: refused, naming the size."""
    if kwargs.get("local_size") is not None:
        raise ValueError(f"attn_implementation={name!r} replaces the model's mask, but this layer has its own sliding "
                         f"window or chunk of {kwargs['local_size']} tokens (local_size), which it would drop; use it "
                         f"with a model without sliding-window or chunked layers (e.g. Llama), or set the config's "
                         f"sliding_window to None")


def _refuse_packed_sequences(name: str, m: Mask, kwargs: dict[str, Any]) -> None:
    """A non-causal mask ``m`` replaces the call's ``mask_function``, which would drop the sequence separation of
    transformers' packed-sequence detection: refused. That detection runs only without a cache and without a padding
    mask (offsets 0, as many keys as queries), and its mask hides key ``q - 1`` from query ``q`` exactly where a
    sequence starts (plain causal never does), so those ``B * (T - 1)`` pairs are checked, on transformers' vmap route
    through ``sdpa_mask`` itself. Skipped under ``torch.compile`` (a data-dependent check)."""
    fn, B, T = kwargs.get("mask_function"), kwargs.get("batch_size"), kwargs.get("q_length")
    if fn is None or kwargs.get("attention_mask") is not None or torch.compiler.is_compiling():
        return
    sizes = (B, T, kwargs.get("kv_length"), kwargs.get("q_offset", 0), kwargs.get("kv_offset", 0))
    if not all(isinstance(v, int) for v in sizes) or T != sizes[2] or sizes[3] != 0 or sizes[4] != 0 or T < 2:
        return
    device = kwargs.get("device", "cpu")
    if kwargs.get("use_vmap", False):  # a function that may not broadcast: built as transformers builds it
        full = sdpa_mask(batch_size=B, q_length=T, kv_length=T, mask_function=fn, allow_is_causal_skip=False,
                         use_vmap=True, device=device)  # (B, 1, T, T)
        before = full.diagonal(offset=-1, dim1=-2, dim2=-1)  # (B, 1, T - 1): key q - 1 for query q
    else:
        q = torch.arange(1, T, device=device)[None, None, :, None]  # (1, 1, T - 1, 1)
        b = torch.arange(B, device=device)[:, None, None, None]  # (B, 1, 1, 1)
        before = fn(b, torch.zeros_like(b[:1]), q, q - 1)  # broadcasts to (B, 1, T - 1, 1)
    if not bool(torch.as_tensor(before).all()):
        raise ValueError(f"attn_implementation={name!r}: transformers found packed sequences in this call "
                         f"(position_ids restarting at 0, no cache, no attention_mask) and separates them in its mask, "
                         f"but {m} is not causal (Mask.causal is False), so it replaces that mask and would attend "
                         f"across the sequences; give one sequence per row, or pass attention_mask (transformers' "
                         f"detection is then off: one sequence per row), or use a causal mask")


def register_hf_attention(name: str, mask: Mask | MaskFn) -> str:
    """Register ``mask`` as the transformers attention implementation ``name`` (module docstring); returns ``name``.

    A causal ``mask`` is AND-ed with the mask transformers asks for (so transformers' packed sequences stay
    separated); a non-causal one replaces it, and a model call with transformers' packed sequences is then a
    ``ValueError`` (module docstring).

    Raises:
        ValueError: an empty name, or a name transformers already uses for its own kernels (``"sdpa"``,
            ``"eager"``, ...), or a mask that differs per head. A mask defined only up to a length (``max_len``,
            e.g. BigBird's random links) is registered, and a model call beyond that length is a ``ValueError``.
        TypeError: ``mask`` is neither a Mask nor a callable.
    """
    _check_name(name)
    m = as_mask(mask, "mask")
    if m.per_head:
        raise ValueError(f"mask {m} differs per head; transformers' masks are (B, 1, T, S), shared by the heads")

    def mask_interface(*args: Any, **kwargs: Any) -> Any:
        _refuse_local_layers(name, kwargs)
        if m.max_len is not None:
            end = max(int(kwargs.get("kv_length", 0)) + int(kwargs.get("kv_offset", 0)),
                      int(kwargs.get("q_length", 0)) + int(kwargs.get("q_offset", 0)))
            if end > m.max_len:
                raise ValueError(f"attn_implementation={name!r}: mask {m} is defined for positions < "
                                 f"max_len={m.max_len}, but this call reaches position {end - 1}")
        # attnlab's predicate, (b, h, q_idx, kv_idx) -> bool on absolute positions, as sdpa_mask calls the incoming
        # transformers mask_function (causal, and the packed sequences' separation when transformers detects them)
        incoming = kwargs.get("mask_function")
        if m.causal and incoming is not None:
            kwargs["mask_function"] = and_masks(m.fn, incoming)  # = m.fn where transformers asks for plain causal
        else:
            _refuse_packed_sequences(name, m, kwargs)
            kwargs["mask_function"] = m.fn
        kwargs["allow_is_causal_skip"] = False
        kwargs.pop("allow_is_bidirectional_skip", None)
        return sdpa_mask(*args, **kwargs)

    AttentionMaskInterface.register(name, mask_interface)
    AttentionInterface.register(name, sdpa_attention_forward)
    _REGISTERED[name] = m
    return name


def registered() -> dict[str, Mask]:
    """Every name registered by attnlab so far, with its mask (for :data:`DOCUMENTS` the part shared by every call,
    :func:`~attnlab.masks.causal`: the documents come from each call's ``position_ids``)."""
    return dict(_REGISTERED)


# ---------------------------------------------------------------------------------------------- DOCUMENTS
def documents_mask(position_ids: Tensor, q_offset: int = 0) -> Mask:
    """attnlab's packed-sequence mask ``document(ids) & causal()`` for the documents that ``position_ids`` delimit.

    Args:
        position_ids: ``(B, T)`` or ``(T,)`` integer positions of ``T`` queries, restarting at 0 at each document
            start and counting up by one inside a document (module docstring); never negative.
        q_offset: absolute index of the first query (the number of cached tokens before it).

    Query ``i`` (absolute, ``q_offset <= i < q_offset + T``) sees key ``j`` iff ``i - position_ids[i - q_offset] <= j
    <= i``: its document started ``position_ids`` tokens back. On ids restarting at 0 this is exactly
    ``document(doc_ids) & causal()`` with ``doc_ids`` numbering the documents (tested); a decoding call needs only the
    new tokens' positions, not the cached tokens' documents. Key indices are absolute, from 0.

    Raises:
        ValueError: ``position_ids`` not an integer tensor of shape ``(T,)`` or ``(B, T)``, a negative position, or a
            negative ``q_offset``.
    """
    pos = torch.as_tensor(position_ids)
    if pos.dtype.is_floating_point or pos.dtype.is_complex or pos.dtype == torch.bool or pos.ndim not in (1, 2):
        raise ValueError(f"position_ids must be an integer tensor of shape (T,) or (B, T), got {pos.dtype} "
                         f"{tuple(pos.shape)}")
    if isinstance(q_offset, bool) or not isinstance(q_offset, int) or q_offset < 0:
        raise ValueError(f"q_offset must be a non-negative int, got {q_offset!r}")
    pos = pos if pos.ndim == 2 else pos.unsqueeze(0)  # (B or 1, T)
    if pos.numel() and not torch.compiler.is_compiling() and int(pos.min()) < 0:
        raise ValueError(f"position_ids must be >= 0 (they restart at 0 at each document start), got minimum "
                         f"{int(pos.min())}")
    T = pos.shape[-1]
    starts = torch.arange(q_offset, q_offset + T, device=pos.device) - pos  # (B or 1, T) each query's document start
    per_batch = starts.shape[0] > 1

    def fn(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        row = b if per_batch else torch.zeros_like(b)
        return (kv <= q) & (kv >= starts.to(q.device)[row, q - q_offset])

    return Mask(name=f"documents(position_ids, B={starts.shape[0]}, T={T}, q_offset={q_offset})", fn=fn, causal=True,
                per_batch=per_batch)


def _documents_mask_interface(*args: Any, **kwargs: Any) -> Any:
    """The mask transformers builds for :data:`DOCUMENTS`: causal on absolute positions, padding AND-ed in (the
    documents are AND-ed in by :func:`_documents_attention`, which sees ``position_ids``). Refuses key layouts other
    than "every token from the first" (static and sliding-window caches)."""
    _refuse_local_layers(DOCUMENTS, kwargs)
    q_offset, kv_offset = int(kwargs.get("q_offset", 0)), int(kwargs.get("kv_offset", 0))
    q_length, kv_length = int(kwargs["q_length"]), int(kwargs["kv_length"])
    if kv_offset != 0 or kv_length != q_offset + q_length:
        raise ValueError(f"attn_implementation={DOCUMENTS!r} needs the keys of every token from the first (no cache or "
                         f"a dynamic cache); this call has kv_offset={kv_offset}, kv_length={kv_length} for "
                         f"q_offset={q_offset}, q_length={q_length} (a static or sliding-window cache?)")
    kwargs["mask_function"] = causal().fn  # absolute positions; transformers' packed-sequence remapping is replaced
    kwargs["allow_is_causal_skip"] = False
    kwargs.pop("allow_is_bidirectional_skip", None)
    return sdpa_mask(*args, **kwargs)


def _documents_attention(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                         attention_mask: Tensor | None, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """transformers' SDPA attention under ``attention_mask`` AND :func:`documents_mask` of the call's
    ``position_ids`` (query ``(B, H, T, D)``, key and value ``(B, H_kv, S, D)``; the ``T`` queries are the last ``T``
    of the ``S`` keys, which :func:`_documents_mask_interface` guarantees)."""
    position_ids = kwargs.get("position_ids")
    B, _, T, _ = query.shape
    S = key.shape[-2]
    if position_ids is None:
        raise ValueError(f"attn_implementation={DOCUMENTS!r} reads the documents from position_ids, but this "
                         f"model's attention call got none (its decoder layers must pass position_ids on, as "
                         f"Llama's do)")
    if position_ids.ndim != 2 or position_ids.shape[-1] != T or position_ids.shape[0] not in (1, B):
        raise ValueError(f"attn_implementation={DOCUMENTS!r} needs position_ids of shape (B, T) = ({B}, {T}) or "
                         f"(1, {T}) for this call, got {tuple(position_ids.shape)}")
    if S < T:
        raise ValueError(f"attn_implementation={DOCUMENTS!r}: {S} keys for {T} queries")
    docs = dense(documents_mask(position_ids, S - T), T, S, batch_size=B, q_offset=S - T,
                 device=query.device)  # (B, 1, T, S)
    if attention_mask is None:
        mask = docs
    elif attention_mask.dtype == torch.bool:
        mask = attention_mask & docs  # (B, 1, T, S)
    else:  # an additive float mask (a 4-D mask given to the model)
        mask = attention_mask.masked_fill(~docs, torch.finfo(attention_mask.dtype).min)  # (B, 1, T, S)
    return sdpa_attention_forward(module, query, key, value, mask, **kwargs)


def _register_documents(name: str = DOCUMENTS) -> str:
    """Register attnlab's packed-sequence mask under ``name`` (module docstring); returns ``name``."""
    _check_name(name)
    AttentionMaskInterface.register(name, _documents_mask_interface)
    AttentionInterface.register(name, _documents_attention)
    _REGISTERED[name] = causal()
    return name


def _register_defaults() -> list[str]:
    """``attnlab-<mechanism>`` for every registered softmax mechanism whose layer has a non-trivial mask shared by
    the heads (its default options), then :data:`DOCUMENTS`."""
    from attnlab.layers import registry
    from attnlab.layers.mha import MultiHeadAttentionConfig

    names = []
    for spec in registry.all_specs():
        try:
            cfg = spec.make_config(d_model=16, n_heads=2)
        except (TypeError, ValueError):
            continue
        if type(cfg) is not MultiHeadAttentionConfig or cfg.mask is None or cfg.mask.plain_causal \
                or cfg.mask.full or cfg.mask.per_head or cfg.score != "scaled_dot":
            continue
        names.append(register_hf_attention(f"attnlab-{spec.name}", cfg.mask))
    names.append(_register_documents())
    return names


#: the names registered on import: one per mask-based mechanism (its default options), and :data:`DOCUMENTS`
DEFAULT_NAMES: tuple[str, ...] = tuple(_register_defaults())
