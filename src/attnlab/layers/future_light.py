"""``future-light``: light future-aware attention for vision-language prefill (Pei et al., "Rethinking Causal Mask
Attention for Vision-Language Inference", arXiv:2505.18605, section 4 "+merge"; spec ``future_mask.md`` 4.3-4.4).

Shape legend: B batch, T positions of this call, H query heads, H_kv key/value heads, D head dim, C ``d_model``.

A causal multi-head attention layer (the parameters and names of ``standard``/``gqa``: ``in_proj``, ``out_proj``,
so a causally trained checkpoint loads unchanged; the paper's method is training-free) whose **prefill** lets each
visual query row read a summary of the future scores that ``mu`` admits, added into the logit of the sink slot(s)
(:func:`attnlab.ops.future.light_future_attention`). Text rows are exactly causal, future values never reach an
output, and the keys and values written to the cache are those of causal attention: **decoding is plain cached
causal attention** (semantics P, spec section 3).

Token types come per call, never through global state: ``layer(x, is_visual=..., key_valid=...)`` (a model passes
them in a block's ``attn_kwargs``):

* ``is_visual`` bool ``(B, T)`` or ``(T,)``: True at image-feature positions. ``None`` (no token types, e.g. a text
  model, ``attnlab verify``'s generic checks, ``attnlab bench``): every token is text and the layer *is* causal
  attention. Given but all False: the same, with one warning per process. Only the first call on a cache (the
  prefill) may hold visual tokens; a later call with one is refused (chunked prefill is out of scope).
* ``key_valid`` bool: False at padding (left or right); ``(B, T)`` in the prefill, ``(B, cache.seq_len + T)`` in a
  decoding call (the padded prompt keys stay hidden); ``(n,)`` rows are shared by the batch. ``None``: no padding.

The checks of both come from :func:`attnlab.masks.vlm.check_is_visual`. A per-call ``mask=`` (which other causal
multi-head layers take) is refused: the merge replaces a future-aware mask.

The registry calls the layer ``causal``: it is, for every call without visual tokens (which is all the generic
checks can give it). With visual tokens, visual rows depend on later keys by design (through one logit per slot);
:mod:`attnlab.verify.future` checks that case.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar, Iterator, Literal

import torch
from torch import Tensor

from attnlab._validation import check_bool, check_float, check_head_geometry
from attnlab.cache.kv import KVCache
from attnlab.layers._common import Choice, HeadGeometry
from attnlab.layers.deconstructed._common import merge_heads, split_heads
from attnlab.layers.mha import MultiHeadAttention
from attnlab.layers.registry import MechanismSpec, register
from attnlab.layers.rope import apply_rope
from attnlab.masks import Mask, causal, key_padding
from attnlab.ops.future import (LIGHT_FUTURE_IMPLS, SinkMass, check_options, default_reduce, light_future_attention,
                                say_no_visual, sink_mass, visual_rows)

__all__ = ["LightFutureConfig", "LightFutureAttention", "record_sink_mass"]


@dataclass(kw_only=True)
class LightFutureConfig(HeadGeometry):
    """Configuration of :class:`LightFutureAttention` (defaults: spec ``future_mask.md`` section 4.3).

    Attributes:
        d_model, n_heads, n_kv_heads, head_dim: head geometry (``n_kv_heads < n_heads``: GQA; the merge runs on every
            query head, after the key/value heads are repeated).
        mu: the admitted future region of a visual row: ``"f"`` (every later key), ``"v2v"`` (later visual keys),
            ``"v2t"`` (later text keys).
        pool: 1-D pooling of the admitted future scores along the keys: ``"max"`` or ``"avg"`` (masked mean).
        pool_size: odd pooling window ``k`` (stride 1, padding ``k // 2``); the paper's grid is 1, 3, 7, 25.
        n_slots: number of sink slots ``p``: the first ``p`` non-padded positions of each sample, all before its first
            visual token.
        reduce: pooled vector to ``p`` values: ``"max"``, ``"mean"``, ``"lse"``; ``None``: ``"max"`` with
            ``pool="max"``, ``"mean"`` with ``pool="avg"``, ``"lse"`` with ``merge_mode="lse_mass"``.
        merge_mode: ``"add_logit"`` (add the summary to the sink's logit) or ``"lse_mass"`` (move the admitted
            future's probability mass onto the sink; needs ``n_slots=1``, ``reduce`` ``"lse"`` or ``None``).
        rope: RoPE on queries and keys at absolute positions (even ``head_dim``); ``rope_base`` its base.
        bias: biases in the input and output projections.
        impl: ``"reference"``, ``"sdpa"``, ``"flex"`` or ``"auto"`` (``"sdpa"``); the prefill op's and the decoding
            softmax's backend. ``"flex"`` is not in the registry's ``backends``: its gradients (CUDA only) are
            untested here.
    """

    d_model: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    mu: Literal["f", "v2v", "v2t"] = "f"
    pool: Literal["max", "avg"] = "max"
    pool_size: int = 7
    n_slots: int = 1
    reduce: Literal["max", "mean", "lse"] | None = None
    merge_mode: Literal["add_logit", "lse_mass"] = "add_logit"
    rope: bool = False
    rope_base: float = 10000.0
    bias: bool = False
    impl: Literal["auto", "reference", "sdpa", "flex"] = "auto"

    # what MultiHeadAttention reads and this mechanism fixes: scaled dot-product, causal, no dropout, no cross
    score: ClassVar[str] = "scaled_dot"
    additive_dim: ClassVar[None] = None
    dropout: ClassVar[float] = 0.0
    cross: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_head_geometry(self.d_model, self.n_heads, self.head_dim, self.n_kv_heads)
        check_options(self.mu, self.pool, self.pool_size, self.n_slots, self.resolved_reduce, self.merge_mode, None,
                      self.impl)
        self.check_rope(base=False)
        check_float("rope_base", self.rope_base, low=1, low_inclusive=False)
        check_bool("bias", self.bias)

    @property
    def resolved_reduce(self) -> str:
        """``reduce``, or the spec's default for ``pool`` and ``merge_mode`` when it is ``None``."""
        return default_reduce(self.pool, self.merge_mode) if self.reduce is None else self.reduce

    @property
    def mask(self) -> Mask:
        """The causal mask of every call without visual tokens, and of decoding."""
        return causal()

    def build(self) -> "LightFutureAttention":
        return LightFutureAttention(self)


class LightFutureAttention(MultiHeadAttention):
    """Causal multi-head attention with the light future-aware prefill; see the module docstring."""

    config_class = LightFutureConfig  # type: ignore[assignment]
    repr_fields = ("d_model", "n_heads", "n_kv_heads", "head_dim", "mu", "pool", "pool_size", "n_slots",
                   "merge_mode", "rope", "impl")
    attention_probabilities: str | None = "the merge prefill is not wired to capture_attention"
    impl = Choice(LIGHT_FUTURE_IMPLS, "Backend of the prefill op and of decoding; reassignable.")
    #: per-call inputs a model passes in the block's ``attn_kwargs`` (keyword arguments of :meth:`forward`)
    token_inputs: ClassVar[tuple[str, ...]] = ("is_visual", "key_valid")

    def __init__(self, config: LightFutureConfig) -> None:
        super().__init__(config)  # type: ignore[arg-type]
        self.mu, self.pool, self.pool_size, self.n_slots = config.mu, config.pool, config.pool_size, config.n_slots
        self.merge_mode = config.merge_mode
        self.merge_options = dict(mu=config.mu, pool=config.pool, pool_size=config.pool_size, n_slots=config.n_slots,
                                  reduce=config.resolved_reduce, merge_mode=config.merge_mode)
        #: while :func:`record_sink_mass` is active: the sink diagnostic of every merging prefill call
        self.sink_log: list[SinkMass] | None = None

    def _padding_mask(self, key_valid: Tensor | None, B: int, n_keys: int, device: torch.device) -> Mask:
        """The causal mask, AND-ed with the key padding of ``key_valid`` ``(B, n_keys)`` when given."""
        if key_valid is None:
            return causal()
        return causal() & key_padding(visual_rows(key_valid, B, n_keys, device=device, arg="key_valid"))

    def forward(self, x: Tensor, *, context: Tensor | None = None, cache: KVCache | None = None,
                is_visual: Tensor | None = None, key_valid: Tensor | None = None,
                mask: Mask | None = None) -> Tensor:  # type: ignore[override]
        """``(B, T, C) -> (B, T, C)``: the light future-aware prefill when ``is_visual`` holds a visual token, else
        causal attention (cached decoding included). See the module docstring for ``is_visual`` and ``key_valid``;
        ``mask`` is refused (the merge replaces a future mask; padding comes as ``key_valid``)."""
        if context is not None:
            raise ValueError("future-light is self-attention only: context must be None")
        if mask is not None:
            raise ValueError(f"future-light takes token types as is_visual= and padding as key_valid=, not a per-call "
                             f"mask (its merge replaces the future-aware mask), got mask={mask}")
        self._validate(x, None, cache, None)
        B, T, _ = x.shape
        offset = 0 if cache is None else cache.seq_len
        mask = self._padding_mask(key_valid, B, offset + T, x.device)
        vis = None if is_visual is None else visual_rows(is_visual, B, T, device=x.device)
        if vis is not None and offset > 0 and bool(vis.any()):
            raise ValueError(f"is_visual: visual tokens are only allowed in the prefill (the first call on a cache), "
                             f"got one at cache.seq_len={offset}; decoding is causal and chunked prefill is not "
                             "supported")
        if vis is None or not bool(vis.any()):
            if vis is not None and offset == 0:
                say_no_visual(stacklevel=2)
            return super().forward(x, cache=cache, mask=mask)
        H, Hkv = self.n_heads, self.n_kv_heads
        q, k, v = (split_heads(t, n) for t, n in zip(self.in_proj(x).split(self._split, dim=-1), (H, Hkv, Hkv)))
        if self.rope:  # (B, H, T, D), (B, H_kv, T, D): the layout a cached decoding step rotates in
            q, k = apply_rope(q, 0, self.rope_base), apply_rope(k, 0, self.rope_base)
        out = light_future_attention(q, k, v, is_visual=vis, key_valid=key_valid, impl=self._impl,
                                     **self.merge_options)  # (B, H, T, D), validates before the cache is written
        if self.sink_log is not None:
            self.sink_log.append(sink_mass(q, k, is_visual=vis, key_valid=key_valid, **self.merge_options))
        if cache is not None:
            cache.update(k, v)  # the causal keys and values, unchanged
        return self.out_proj(merge_heads(out))  # (B, T, C)


@contextlib.contextmanager
def record_sink_mass(model: torch.nn.Module) -> Iterator[dict[str, list[SinkMass]]]:
    """Within the ``with`` block, every ``future-light`` layer of ``model`` logs the diagnostic of spec
    ``future_mask.md`` 4.7 for each prefill call with visual tokens: the mean attention probability of its merging
    visual rows on the sink slot(s), before and after the merge (:class:`attnlab.ops.future.SinkMass`; ``rows`` 0
    and ``nan`` means when no visual row has an admitted future). Yields ``{module name:
    [SinkMass per call]}``, filled as the model runs; the layers stop logging when the block ends.

    Raises:
        ValueError: ``model`` has no ``future-light`` layer.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LightFutureAttention)}
    if not layers:
        raise ValueError(f"model has no future-light layer to log the sink mass of ({type(model).__name__})")
    log: dict[str, list[SinkMass]] = {name: [] for name in layers}
    for name, layer in layers.items():
        layer.sink_log = log[name]
    try:
        yield log
    finally:
        for layer in layers.values():
            layer.sink_log = None


register(MechanismSpec(name="future-light", make_config=LightFutureConfig, causal=True, cache="kv",
                       backends=("reference", "sdpa"),
                       description="light future-aware attention (Pei et al. 2025, +merge): in prefill, visual rows "
                                   "pool the future scores mu admits into the sink's logit; text rows and decoding "
                                   "causal (KV cache); needs is_visual"))
