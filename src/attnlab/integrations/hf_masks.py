"""attnlab's masks inside stock Hugging Face models: ``attn_implementation="attnlab-strided"`` (for example).

:func:`register_hf_attention` registers an attnlab :class:`~attnlab.masks.Mask` (or any FlexAttention-style
``mask_mod``) under a name in transformers' two registries: ``AttentionMaskInterface`` (the mask a model's
``create_causal_mask`` builds: transformers' ``sdpa_mask`` with the attnlab predicate in place of the causal one, the
2-D padding mask AND-ed in by transformers, never skipped for ``is_causal``) and ``AttentionInterface`` (transformers'
own SDPA attention function, which then applies that boolean mask). A stock model loaded or configured with
``attn_implementation=name`` then runs with the mask in training and in ``generate()`` alike: positions are absolute
(``q_idx`` counts the cached tokens), as attnlab's masks expect.

Importing this module (or :mod:`attnlab.integrations.hf`) registers ``"attnlab-<mechanism>"`` for every registered
mask-based softmax mechanism with its default options (:data:`DEFAULT_NAMES`: ``attnlab-sliding-window``,
``attnlab-strided``, ``attnlab-fixed``, ``attnlab-prefix-lm`` and the others whose default mask is the same for
every head); other options: ``register_hf_attention("my-window", attnlab.masks.sliding_window(128))``.

Masks that differ per head (BigBird with per-head random links) cannot be expressed in transformers' ``(B, 1, T, S)``
masks and are refused. ``transformers`` is imported here (``pip install 'attnlab[hf]'``).
"""

from __future__ import annotations

from typing import Any

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from attnlab.masks import Mask, as_mask
from attnlab.masks.core import MaskFn

__all__ = ["register_hf_attention", "registered", "DEFAULT_NAMES"]

_REGISTERED: dict[str, Mask] = {}


def register_hf_attention(name: str, mask: Mask | MaskFn) -> str:
    """Register ``mask`` as the transformers attention implementation ``name`` (module docstring); returns ``name``.

    Raises:
        ValueError: an empty name, or a name transformers already uses for its own kernels (``"sdpa"``,
            ``"eager"``, ...), or a mask that differs per head. A mask defined only up to a length (``max_len``,
            e.g. BigBird's random links) is registered, and a model call beyond that length is a ``ValueError``.
        TypeError: ``mask`` is neither a Mask nor a callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if name in ("sdpa", "eager", "flex_attention") or name.startswith("flash_attention"):
        raise ValueError(f"name={name!r} is one of transformers' own implementations; pick another (e.g. "
                         f"'attnlab-{name}')")
    m = as_mask(mask, "mask")
    if m.per_head:
        raise ValueError(f"mask {m} differs per head; transformers' masks are (B, 1, T, S), shared by the heads")

    def mask_interface(*args: Any, **kwargs: Any) -> Any:
        if m.max_len is not None:
            end = max(int(kwargs.get("kv_length", 0)) + int(kwargs.get("kv_offset", 0)),
                      int(kwargs.get("q_length", 0)) + int(kwargs.get("q_offset", 0)))
            if end > m.max_len:
                raise ValueError(f"attn_implementation={name!r}: mask {m} is defined for positions < "
                                 f"max_len={m.max_len}, but this call reaches position {end - 1}")
        kwargs["mask_function"] = m.fn  # attnlab's predicate, (b, h, q_idx, kv_idx) -> bool, absolute positions
        kwargs["allow_is_causal_skip"] = False
        kwargs.pop("allow_is_bidirectional_skip", None)
        return sdpa_mask(*args, **kwargs)

    AttentionMaskInterface.register(name, mask_interface)
    AttentionInterface.register(name, sdpa_attention_forward)
    _REGISTERED[name] = m
    return name


def registered() -> dict[str, Mask]:
    """Every name registered by attnlab so far, with its mask."""
    return dict(_REGISTERED)


def _register_defaults() -> list[str]:
    """``attnlab-<mechanism>`` for every registered softmax mechanism whose layer has a non-trivial mask shared by
    the heads (its default options)."""
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
    return names


#: the names registered on import, one per mask-based mechanism (its default options)
DEFAULT_NAMES: tuple[str, ...] = tuple(_register_defaults())
