"""``decon_staticembqk``: the StaticEmbQK variant of "Deconstructing Attention", which relaxes Current QK (paper
section 3.5, Eq. 13; spec 3.7).

Shape legend: B batch, H heads, T query positions, S key positions (``offset + T``), D head dim, C ``d_model``.

    e = Emb(t)                   this input's token embeddings, before any block            # (B, T, C)
    e^ = Norm_l(e)               the block's own pre-norm (``static_norm="block"``; ``"none"``: e itself)
    Q = e^ W_Q;  K = e^ W_K  (RoPE);   V = H W_V                                            # (B, H, T, D)
    A = causal softmax(Q K^T / sqrt(D));   O = concat_heads(A V) W_O

The map depends on the token ids only, not on the contextual hidden states ``H``. The model passes ``e`` as
``inputs=MixerInputs(token_emb=e, norm=block.attn_norm)`` (:class:`attnlab.models.lm.LM` does, and refuses
``inputs_embeds`` without ``idx`` for this variant). Called without ``inputs`` (outside a model: ``attnlab verify``,
``attnlab bench``), the layer is its model's first layer, where ``Norm_1(e)`` *is* the layer input: Q and K come
from ``x``. Learned: W_Q, W_K, W_V, W_O (``4 C^2``). Decoding: a key/value cache (keys from ``e``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from attnlab._validation import check_layer_input
from attnlab.cache.kv import KVCache
from attnlab.layers._common import AttentionLayer
from attnlab.layers.deconstructed._common import (DeconRopeConfig, MixerInputs, QKVOProjections, causal_softmax_probs,
                                                  check_inputs, merge_heads, rope_if, split_heads)
from attnlab.layers.registry import MechanismSpec, register

__all__ = ["StaticEmbQKConfig", "StaticEmbQKAttention"]


@dataclass(kw_only=True)
class StaticEmbQKConfig(DeconRopeConfig):
    """Configuration of :class:`StaticEmbQKAttention`.

    Attributes:
        d_model, n_heads, head_dim: head geometry.
        static_norm: ``"block"`` (the block's pre-norm on ``e``; default, spec 3.7) or ``"none"``.
        rope: RoPE on q and k (default on in an LM).
        rope_base: RoPE base.
    """

    static_norm: Literal["block", "none"] = "block"

    def check(self) -> None:
        if self.static_norm not in ("block", "none"):
            raise ValueError(f"static_norm must be one of ('block', 'none'), got {self.static_norm!r}")


class StaticEmbQKAttention(AttentionLayer):
    """Causal attention with Q, K from the static token embeddings, V from the input; see the module docstring."""

    config_class = StaticEmbQKConfig
    repr_fields = ("d_model", "n_heads", "head_dim", "static_norm", "rope")
    attention_probabilities: str | None = "not wired to capture_attention; use layer.attention_map(x, inputs)"
    #: what the layer reads from :class:`MixerInputs` (the model passes it)
    mixer_inputs: ClassVar[tuple[str, ...]] = ("token_emb",)

    def __init__(self, config: StaticEmbQKConfig) -> None:
        super().__init__(config)
        QKVOProjections.attach(self, config.d_model, self.n_heads, self.head_dim)
        self.static_norm = config.static_norm
        self.rope, self.rope_base = config.rope, float(config.rope_base)

    def new_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> KVCache:
        w = self.q_proj.weight
        return KVCache(batch_size, self.n_heads, self.head_dim, device=w.device if device is None else device,
                       dtype=w.dtype if dtype is None else dtype)

    def static_source(self, x: Tensor, inputs: MixerInputs | None) -> Tensor:
        """``e^`` ``(B, T, C)``: the normalised static embeddings, or ``x`` without ``inputs``."""
        check_inputs(inputs, "decon_staticembqk")
        if inputs is None:
            return x
        e = inputs.token_emb
        if e is None:
            raise ValueError("decon_staticembqk needs inputs.token_emb (the token embeddings Emb(idx) of this call), "
                             "got None")
        if not isinstance(e, Tensor) or e.shape != x.shape:
            got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
            raise ValueError(f"inputs.token_emb must have the input's shape {tuple(x.shape)}, got {got}")
        return inputs.normed(e) if self.static_norm == "block" else e

    def _qk(self, src: Tensor, offset: int) -> tuple[Tensor, Tensor]:
        q = rope_if(split_heads(self.q_proj(src), self.n_heads), self.rope, offset, self.rope_base)  # (B, H, T, D)
        k = rope_if(split_heads(self.k_proj(src), self.n_heads), self.rope, offset, self.rope_base)  # (B, H, T, D)
        return q, k

    def attention_map(self, x: Tensor, inputs: MixerInputs | None = None) -> Tensor:
        """The causal map ``(B, H, T, T)`` (it reads ``x`` only without ``inputs``)."""
        q, k = self._qk(self.static_source(x, inputs), 0)
        return causal_softmax_probs(q, k, q_offset=0)

    def forward(self, x: Tensor, *, context: Tensor | None = None, cache: KVCache | None = None,
                inputs: MixerInputs | None = None) -> Tensor:
        """``(B, T, C) -> (B, T, C)``; ``inputs.token_emb`` ``(B, T, C)`` holds this call's token embeddings."""
        check_layer_input(x, d_model=self.d_model, reference_param=self.q_proj.weight)
        if context is not None:
            raise ValueError("decon_staticembqk has no cross-attention: context must be None")
        if cache is not None and not isinstance(cache, KVCache):
            raise ValueError(f"cache must be a KVCache from layer.new_cache(), got {type(cache).__name__}")
        offset = 0 if cache is None else cache.seq_len
        q, k = self._qk(self.static_source(x, inputs), offset)
        v = split_heads(self.v_proj(x), self.n_heads)  # (B, H, T, D)
        if cache is not None:
            cache.check_compatible(batch_size=x.shape[0], n_kv_heads=self.n_heads, head_dim=self.head_dim,
                                   v_head_dim=self.head_dim, dtype=x.dtype, device=x.device)
            k, v, _ = cache.update(k, v)  # (B, H, S, D)
        probs = causal_softmax_probs(q, k, q_offset=offset)  # (B, H, T, S)
        return self.out_proj(merge_heads(probs @ v))  # (B, T, C)


register(MechanismSpec(
    name="decon_staticembqk",
    description="Deconstructing Attention: Q, K from the static token embeddings Emb(t) (Eq. 13), V from the "
                "input; KV cache",
    make_config=StaticEmbQKConfig,
    causal=True,
    cache="kv",
))
