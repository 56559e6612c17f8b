"""Hugging Face transformers: future-aware masks and light future-aware attention on VLMs (spec future_mask.md §5),
and attnlab's language models as transformers models.

Importing this module also registers :class:`~attnlab.integrations.hf_model.AttnlabForCausalLM` (any attnlab LM, with
its mechanisms' own caches) with ``AutoConfig`` / ``AutoModelForCausalLM``, so ``AutoModelForCausalLM.from_pretrained``
loads what ``attnlab export --format hf`` writes (:mod:`attnlab.integrations.hf_export`), and registers attnlab's
mask-based mechanisms as transformers attention implementations ``"attnlab-<mechanism>"``
(:mod:`attnlab.integrations.hf_masks`, :func:`register_hf_attention` for other options).

Needs the ``hf`` extra (``pip install 'attnlab[hf]'``, which brings ``transformers``); the core of attnlab never
imports this module. Two calls, each usable as a context manager or as a function whose handle has ``remove()``:

* :func:`apply_future_mask` ``(model, kind, semantics="P")``: the language model's self-attention runs under the
  mask ``kind`` of :func:`attnlab.masks.vlm.future_mask` (``"c"``, ``"f"``, ``"v2v"``, ``"v2t"``) on the prefill.
* :func:`apply_light_future` ``(model, mu="f", ...)``: the language model's attention becomes the light "+merge"
  variant (:func:`attnlab.ops.future.light_future_attention`) on the prefill; it is registered with transformers as
  the ``AttentionInterface`` function ``"attnlab_future_light"`` (decoding steps use transformers' SDPA function).

Supported models: ``LlavaForConditionalGeneration`` and ``Qwen2VLForConditionalGeneration``, loaded with
``attn_implementation="eager"`` or ``"sdpa"`` (``flash_attention_2`` only takes a 2-D padding mask and cannot
express these masks; both calls refuse it, and every other implementation, with a ``ValueError``).

How it works (nothing but the masks changes: positions, M-RoPE, embeddings, the vision tower and the KV cache are the
model's own):

* **Visual positions** are where the model's ``input_ids == config.image_token_id`` (Qwen2-VL: also
  ``video_token_id``; with ``delimiters_as="V"`` also its ``<|vision_start|>``/``<|vision_end|>`` ids). A forward
  pre-hook on the model reads them from each call's ``input_ids``; a call with ``inputs_embeds`` only is refused.
* **Masks** (spec §5.3, route A): a forward pre-hook on the language model replaces the 2-D padding mask of a prefill
  by the 4-D mask that transformers' own ``create_causal_mask`` builds with ``or_mask_function`` = the future
  predicate of :func:`~attnlab.masks.vlm.future_mask` (causal and padding come from transformers, padding AND-ed
  last, so relaxed edges never reach a pad key). The model's layers take a 4-D mask unchanged.
* **Prefill-only** (semantics ``"P"``, the default): only a call that starts from an empty cache is changed; each
  cached decoding step is the model's own. ``generate(use_cache=False)`` re-runs the prompt with the generated
  tokens at every step; under P the future edges then stop at the prompt length, so it reproduces the cached run.
  Semantics ``"R"`` lets visual rows see generated tokens: with ``kind="f"`` or ``"v2t"`` it needs
  ``generate(use_cache=False)`` (a cached decode step cannot recompute visual rows; refused with a ``ValueError``).
* A call without any visual token, and every call under ``kind="c"``, is left untouched: outputs are bitwise the
  unpatched model's.
* Padding follows attnlab's rule (spec §1.4): no real query sees a pad key, and a left-pad query row keeps its own
  diagonal, so no softmax row is empty (transformers' own mask empties those rows, which gives NaN in float64 eager).
* A cached call that holds visual tokens (chunked prefill, or an image after the cache) is refused, as are 4-D /
  per-layer-type masks given to the prefill (custom masks, some static caches) and Qwen2-VL sliding-window
  layers.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

try:
    import transformers
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, create_causal_mask, sdpa_mask
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("attnlab.integrations.hf needs transformers: pip install 'attnlab[hf]'") from exc

from attnlab.masks.vlm import FUTURE_KINDS, SEMANTICS, FutureKind, Semantics, future_mask
from attnlab.integrations.hf_masks import register_hf_attention  # registers attnlab-<mechanism> masks
from attnlab.integrations.hf_model import AttnlabConfig, AttnlabForCausalLM  # registers them with the Auto classes
from attnlab.ops.future import check_options, default_reduce, light_future_attention

__all__ = ["apply_future_mask", "apply_light_future", "FuturePatch", "LIGHT_ATTENTION", "SUPPORTED_MODELS",
           "SUPPORTED_ATTENTION", "visual_token_ids", "AttnlabConfig", "AttnlabForCausalLM", "register_hf_attention"]

#: The name of the light variant in transformers' ``AttentionInterface`` and ``AttentionMaskInterface``.
LIGHT_ATTENTION = "attnlab_future_light"
#: The model classes (in ``transformers``) these calls patch.
SUPPORTED_MODELS: tuple[str, ...] = ("LlavaForConditionalGeneration", "Qwen2VLForConditionalGeneration")
#: The language-model attention implementations that can take the masks.
SUPPORTED_ATTENTION: tuple[str, ...] = ("eager", "sdpa")
DELIMITERS_AS: tuple[str, ...] = ("T", "V")
_PATCH_ATTR = "_attnlab_future_patch"  # on the model (one patch at a time) and on each patched attention module


def _family(model: object) -> str:
    for name in SUPPORTED_MODELS:
        cls = getattr(transformers, name, None)
        if cls is not None and isinstance(model, cls):
            return name
    raise ValueError(f"model must be one of transformers' {SUPPORTED_MODELS}, got {type(model).__name__}")


def visual_token_ids(model: nn.Module, *, delimiters_as: Literal["T", "V"] = "T") -> tuple[int, ...]:
    """The token ids whose positions are visual (``V``) in ``model``'s ``input_ids`` (spec §1.2): the image token id
    (LLaVA ``config.image_token_id``; Qwen2-VL also ``video_token_id``, and with ``delimiters_as="V"`` the vision
    start/end ids). LLaVA has no delimiter tokens, so ``delimiters_as`` changes nothing there."""
    if delimiters_as not in DELIMITERS_AS:
        raise ValueError(f"delimiters_as must be one of {DELIMITERS_AS}, got {delimiters_as!r}")
    config = model.config
    if _family(model) == "LlavaForConditionalGeneration":
        return (int(config.image_token_id),)
    ids = [config.image_token_id, config.video_token_id]
    if delimiters_as == "V":
        ids += [config.vision_start_token_id, config.vision_end_token_id]
    return tuple(int(i) for i in ids if i is not None)


@functools.lru_cache(maxsize=1)
def _cache_kwarg() -> str:
    """The name ``create_causal_mask`` gives the cache (``cache``; ``past_key_values`` before its rename)."""
    params = inspect.signature(create_causal_mask).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cached(kwargs: dict) -> int:
    """How many positions the cache in a model call's ``kwargs`` holds (0 without one)."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return int(cache.get_seq_length()) if cache is not None else 0


def _check_padding_mask(mask: object) -> None:
    if mask is not None and not (isinstance(mask, Tensor) and mask.ndim == 2):
        raise ValueError("attention_mask of the prefill must be the 2-D padding mask (B, L), got "
                         f"{type(mask).__name__}{tuple(mask.shape) if isinstance(mask, Tensor) else ''}: 4-D or "
                         "per-layer masks (custom masks, some static caches) are not supported")


def _with_diagonal(mask: Tensor) -> Tensor:
    """``mask`` (B, 1, L, S) of a prefill from position 0, bool (True = allowed) or additive float, with every
    ``(i, i)`` allowed: transformers AND-s padding last, which empties the rows of left-pad queries; attnlab's padding
    rule (spec §1.4) keeps their diagonal, so no softmax row is empty (no NaN). Real rows never see a pad key."""
    eye = torch.eye(mask.shape[-2], mask.shape[-1], dtype=torch.bool, device=mask.device)  # (L, S)
    return mask | eye if mask.dtype == torch.bool else mask.masked_fill(eye, 0.0)


@dataclass(frozen=True)
class _Light:
    """Options of :func:`light_future_attention` (spec §4.3) plus the layers that get the merge."""

    mu: str
    pool: str
    pool_size: int
    n_slots: int
    reduce: str
    merge_mode: str
    impl: str
    layers: frozenset[int] | None


class FuturePatch:
    """The handle of :func:`apply_future_mask` / :func:`apply_light_future`: a context manager; ``remove()`` undoes
    the patch (hooks, the ``generate`` wrapper and, for the light variant, the attention implementation)."""

    def __init__(self, model: nn.Module, *, kind: str, semantics: str, delimiters_as: str,
                 light: _Light | None) -> None:
        self.model = model
        self.kind = kind
        self.semantics = semantics
        self.light = light
        self.language_model = model.model.language_model
        self._ids = torch.tensor(visual_token_ids(model, delimiters_as=delimiters_as))  # type: ignore[arg-type]
        self._is_visual: Tensor | None = None  # the current model call's token types (B, L)
        self._active: Tensor | None = None  # light variant: the prefill's is_visual while the LM runs it
        self._prompt_len: int | None = None  # set by generate(use_cache=False) under P
        self._orig_attn = self.language_model.config._attn_implementation
        self._handles = [
            model.register_forward_pre_hook(self._on_model_call, with_kwargs=True),
            self.language_model.register_forward_pre_hook(self._on_lm_call, with_kwargs=True),
            self.language_model.register_forward_hook(self._after_lm_call),
        ]
        self._attention = [layer.self_attn for layer in self.language_model.layers]
        if light is not None:
            for attn in self._attention:
                setattr(attn, _PATCH_ATTR, self)
            self.language_model.config._attn_implementation = LIGHT_ATTENTION
        model.generate = self._generate  # type: ignore[method-assign]
        setattr(model, _PATCH_ATTR, self)
        self._removed = False

    @property
    def needs_recompute(self) -> bool:
        """Semantics R with ``kind`` ``"f"`` or ``"v2t"``: visual rows see generated tokens, so no cached decode."""
        return self.light is None and self.semantics == "R" and self.kind in ("f", "v2t")

    def remove(self) -> None:
        """Undo the patch (idempotent)."""
        if self._removed:
            return
        for h in self._handles:
            h.remove()
        for attn in self._attention:
            if getattr(attn, _PATCH_ATTR, None) is self:
                delattr(attn, _PATCH_ATTR)
        if self.light is not None:
            self.language_model.config._attn_implementation = self._orig_attn
        if self.model.__dict__.get("generate") == self._generate:
            del self.model.generate
        if getattr(self.model, _PATCH_ATTR, None) is self:
            delattr(self.model, _PATCH_ATTR)
        self._removed = True

    def __enter__(self) -> FuturePatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def _generate(self, *args: Any, **kwargs: Any) -> Any:
        config = kwargs.get("generation_config") or self.model.generation_config
        use_cache = kwargs.get("use_cache", getattr(config, "use_cache", True))
        use_cache = True if use_cache is None else bool(use_cache)
        if self.needs_recompute and use_cache:
            raise ValueError(f"semantics='R' with kind={self.kind!r} lets visual rows see generated tokens, which a "
                             "cached decoding step cannot recompute: call generate(..., use_cache=False)")
        if self.light is not None and not use_cache:
            raise ValueError("use_cache=False: the light variant is prefill-only (it merges the prompt's future "
                             "once); re-running it over generated tokens is not defined; call generate with a cache")
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._prompt_len = int(ids.shape[-1]) if not use_cache and isinstance(ids, Tensor) else None
        try:
            return type(self.model).generate(self.model, *args, **kwargs)
        finally:
            self._prompt_len = None

    def _on_model_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.kind == "c":
            return  # the causal mask: nothing to change, nothing to refuse
        ids = kwargs.get("input_ids", args[0] if args else None)
        vis = torch.isin(ids, self._ids.to(ids.device)) if isinstance(ids, Tensor) else None
        self._is_visual = vis
        cached = _cached(kwargs)
        if cached and vis is not None and bool(vis.any()):
            raise ValueError(f"input_ids holds image tokens after {cached} cached positions (chunked prefill, or an "
                             "image after the prompt): the future-aware prefill must hold the whole prompt")
        if not cached and vis is not None and bool(vis.any()):
            _check_padding_mask(kwargs.get("attention_mask"))
        if cached and self.needs_recompute:
            raise ValueError(f"semantics='R' with kind={self.kind!r} cannot decode from a cache (visual rows see "
                             "generated tokens): recompute every step, e.g. generate(..., use_cache=False)")

    def _on_lm_call(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        self._active = None
        if self.kind == "c":
            return None
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise ValueError("the language model of a patched VLM must be called with inputs_embeds (as the VLM's "
                             "forward does); call the VLM itself")
        vis, self._is_visual = self._is_visual, None
        if vis is None:
            raise ValueError("input_ids is needed: visual positions are where input_ids is one of the image token "
                             f"ids {tuple(self._ids.tolist())}; got a call with inputs_embeds only")
        if tuple(vis.shape) != tuple(embeds.shape[:2]):
            raise ValueError(f"input_ids of shape {tuple(vis.shape)} must match the language model's inputs "
                             f"{tuple(embeds.shape[:2])}")
        if _cached(kwargs) or not bool(vis.any()):
            return None  # a decoding step (checked by _on_model_call) or no image: the model's own path
        mask = kwargs.get("attention_mask")
        _check_padding_mask(mask)
        if self.light is not None:
            self._active = vis.to(embeds.device)
            return None
        limit = None
        if self.semantics == "P":
            limit = self._prompt_len if self._prompt_len is not None else int(vis.shape[1])
        extra = future_mask(self.kind, vis.to(embeds.device), semantics=self.semantics,  # type: ignore[arg-type]
                            prompt_len=limit).fn
        full = create_causal_mask(config=module.config, inputs_embeds=embeds, attention_mask=mask, position_ids=None,
                                  or_mask_function=extra,
                                  **{_cache_kwarg(): kwargs.get("cache", kwargs.get("past_key_values"))})  # (B,1,L,S)
        kwargs["attention_mask"] = _with_diagonal(full)
        return args, kwargs

    def _after_lm_call(self, module: nn.Module, args: tuple, output: object) -> None:
        self._active = None  # the light merge belongs to that call only

    def light_attention(self, module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                        attention_mask: Tensor | None, scaling: float | None) -> Tensor | None:
        """The light prefill attention ``(B, L, H, Dv)`` for ``module``, or ``None`` where this call is not a
        scheduled prefill (then the caller runs SDPA)."""
        vis, light = self._active, self.light
        assert light is not None
        if vis is None:
            return None
        if query.shape[-2] != vis.shape[1] or key.shape[-2] != vis.shape[1]:
            raise ValueError(f"the light prefill needs as many keys as queries ({vis.shape[1]}), got "
                             f"{key.shape[-2]} keys: a static or pre-filled cache is not supported")
        if light.layers is not None and getattr(module, "layer_idx", None) not in light.layers:
            return None
        if module.training:
            raise ValueError("the light variant is an inference-time change: call model.eval() first")
        key_valid = None
        if attention_mask is not None:
            if attention_mask.dtype != torch.bool or attention_mask.ndim != 4:
                raise ValueError(f"attention_mask must be the boolean SDPA mask (B, 1, L, L), got "
                                 f"{attention_mask.dtype} {tuple(attention_mask.shape)}")
            key_valid = attention_mask[:, 0].any(dim=-2)  # (B, L): a pad key is hidden from every row
        out = light_future_attention(query, key, value, is_visual=vis, key_valid=key_valid, mu=light.mu,  # type: ignore
                                     pool=light.pool, pool_size=light.pool_size, n_slots=light.n_slots,  # type: ignore
                                     reduce=light.reduce, merge_mode=light.merge_mode,  # type: ignore[arg-type]
                                     scale=scaling, impl=light.impl)  # type: ignore[arg-type]  # (B, H, L, Dv)
        return out.transpose(1, 2).contiguous()  # (B, L, H, Dv)


def _light_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                             attention_mask: Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                             **kwargs: Any) -> tuple[Tensor, None]:
    """``AttentionInterface`` function ``"attnlab_future_light"``: the light merge on a patched prefill, transformers'
    SDPA attention everywhere else (decoding, unpatched modules, calls without visual tokens)."""
    patch = getattr(module, _PATCH_ATTR, None)
    out = patch.light_attention(module, query, key, value, attention_mask, scaling) if patch is not None else None
    if out is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    return out, None


AttentionInterface.register(LIGHT_ATTENTION, _light_attention_forward)
AttentionMaskInterface.register(LIGHT_ATTENTION, sdpa_mask)


def _check_model(model: object) -> None:
    _family(model)
    if getattr(model, _PATCH_ATTR, None) is not None:
        raise ValueError("model is already patched by attnlab.integrations.hf: remove() the first patch (or leave "
                         "its with-block) before applying another")
    lm_config = model.model.language_model.config  # type: ignore[attr-defined]
    attn = lm_config._attn_implementation
    if attn not in SUPPORTED_ATTENTION:
        raise ValueError(f"attn_implementation must be one of {SUPPORTED_ATTENTION} for the language model, got "
                         f"{attn!r}" + (": it takes only a 2-D padding mask and cannot express future-aware masks"
                                        if str(attn).startswith("flash_attention") else "")
                         + "; load the model with attn_implementation='sdpa' (or 'eager')")
    types = set(getattr(lm_config, "layer_types", None) or ["full_attention"])
    if types != {"full_attention"}:
        raise ValueError(f"model has language-model layer types {sorted(types)}: only full-attention layers are "
                         "supported (disable sliding-window attention)")


def apply_future_mask(model: nn.Module, kind: FutureKind, *, semantics: Semantics = "P",
                      delimiters_as: Literal["T", "V"] = "T") -> FuturePatch:
    """Run ``model``'s language-model prefill under the future-aware mask ``kind`` (module docstring).

    Args:
        model: a ``LlavaForConditionalGeneration`` or ``Qwen2VLForConditionalGeneration`` with eager or SDPA attention.
        kind: ``"c"`` (causal: the model unchanged), ``"f"``, ``"v2v"`` or ``"v2t"`` (spec §2.1).
        semantics: ``"P"`` (prefill-only) or ``"R"`` (recompute; ``"f"``/``"v2t"`` need ``use_cache=False``).
        delimiters_as: ``"T"`` (image delimiter tokens are text, the default) or ``"V"``.

    Returns:
        A :class:`FuturePatch`: use it as ``with apply_future_mask(model, "v2v"): model.generate(...)``, or call its
        ``remove()``.

    Raises:
        ValueError: naming the argument: an unsupported model or attention implementation, a bad ``kind``,
            ``semantics`` or ``delimiters_as``, a model already patched.
    """
    if kind not in FUTURE_KINDS:
        raise ValueError(f"kind must be one of {FUTURE_KINDS}, got {kind!r}")
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    _check_model(model)
    return FuturePatch(model, kind=kind, semantics=semantics, delimiters_as=delimiters_as, light=None)


def apply_light_future(model: nn.Module, *, mu: Literal["f", "v2v", "v2t"] = "f",
                       pool: Literal["max", "avg"] = "max", pool_size: int = 7, n_slots: int = 1,
                       reduce: Literal["max", "mean", "lse"] | None = None,
                       merge_mode: Literal["add_logit", "lse_mass"] = "add_logit",
                       layers: Sequence[int] | None = None, impl: Literal["auto", "reference", "sdpa"] = "auto",
                       delimiters_as: Literal["T", "V"] = "T") -> FuturePatch:
    """Run ``model``'s language-model prefill with light future-aware attention (spec §4, §5.5).

    The options are those of :func:`attnlab.ops.future.light_future_attention` (``mu``, ``pool``, ``pool_size``,
    ``n_slots``, ``reduce``, ``merge_mode``, ``impl``); ``layers``: the decoder layer numbers that get the merge
    (``None``: all). The sink slots are the first ``n_slots`` non-padded positions of each sample (LLaVA: BOS), which
    must precede its first image token. Decoding is the model's cached SDPA attention; ``generate(use_cache=False)``
    is refused (the merge is prefill-only).

    Returns:
        A :class:`FuturePatch` (context manager, or call ``remove()``). While applied, the language model's
        ``config._attn_implementation`` is ``"attnlab_future_light"``.

    Raises:
        ValueError: naming the argument: an unsupported model or attention implementation, a bad option, a layer
            number out of range, a model already patched.
    """
    red = default_reduce(pool, merge_mode) if reduce is None else reduce
    check_options(mu, pool, pool_size, n_slots, red, merge_mode, None, impl)
    if impl == "flex":
        raise ValueError("impl must be one of ('auto', 'reference', 'sdpa') here, got 'flex'")
    _check_model(model)
    n_layers = len(model.model.language_model.layers)  # type: ignore[union-attr]
    chosen = None
    if layers is not None:
        chosen = frozenset(layers)
        if not chosen or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_layers for i in chosen):
            raise ValueError(f"layers must be a non-empty set of layer numbers in [0, {n_layers}), got {layers!r}")
    light = _Light(mu=mu, pool=pool, pool_size=pool_size, n_slots=n_slots, reduce=red, merge_mode=merge_mode,
                   impl=impl, layers=chosen)
    return FuturePatch(model, kind=mu, semantics="P", delimiters_as=delimiters_as, light=light)

