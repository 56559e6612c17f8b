"""Linear attention layers (Katharopoulos et al. 2020; Based's Taylor map, Arora et al. 2024), with a
recurrent-state decoding cache.

Shape legend: B batch, T query length, S key length (``S == T`` for self-attention, the context length for
cross-attention), H query heads, H_kv key/value heads (``H % H_kv == 0``), Dqk query/key head dim, Dv value
head dim, F feature dim (``feature_dim(feature_map, Dqk)``).

The attention is :func:`attnlab.ops.linear.linear_attention`; its state ``(kv (B, H, F, Dv), z (B, H, F))``
is what :class:`~attnlab.cache.recurrent.RecurrentStateCache` carries between calls, so prefill of any length
followed by one token at a time equals running the whole sequence at once, at constant memory per token.

Registered mechanisms (all causal, cache ``"recurrent"``, backends ``("recurrent", "parallel", "chunked")``,
the recurrent loop being the specification):

* ``"linear"``: ``feature_map="elu1"`` (Katharopoulos et al.).
* ``"linear-relu"``: ``feature_map="relu"``.
* ``"based"``: ``feature_map="taylor"`` with ``qk_head_dim=16`` by default, as in Based, which keeps
  ``F = 1 + 16 + 256 = 273`` whatever the model width. This is Based's Taylor linear attention only; Based
  pairs it with a small sliding-window softmax layer, which a model builds from ``"sliding-window"``.

Positions and cross-attention
    With ``rope=True`` queries and keys are rotated at their absolute positions (from ``cache.seq_len`` when
    decoding) *before* the feature map. ``forward(x, context=...)`` (keys and values from ``context``) needs
    ``causal=False`` (a causal mask between unrelated sequences means nothing), never uses RoPE, and has no
    cache. Dropout (training only) acts on the per-head attention output before the output projection: the
    fast forms never form an attention matrix to drop entries from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab._validation import (
    check_bool,
    check_float,
    check_head_geometry,
    check_int,
    check_layer_context,
    check_layer_input,
    check_matches_param,
)
from attnlab.cache.recurrent import RecurrentStateCache
from attnlab.layers._common import AttentionLayer, Choice, HeadGeometry
from attnlab.layers.registry import MechanismSpec, register
from attnlab.layers.rope import apply_rope
from attnlab.ops.linear import LINEAR_IMPLS, FeatureMapName, LinearImpl, feature_dim, feature_map_names, linear_attention

__all__ = ["LinearAttentionConfig", "LinearAttention"]


@dataclass(kw_only=True)
class LinearAttentionConfig(HeadGeometry):
    """Configuration of :class:`LinearAttention`.

    Attributes:
        d_model: model width, the last dim of the input and the output.
        n_heads: query heads ``H``.
        head_dim: value head dim ``Dv`` (and the query/key head dim unless ``qk_head_dim``); ``None`` means
            ``d_model // n_heads`` (then ``n_heads`` must divide ``d_model``). The output projection maps
            ``n_heads * head_dim -> d_model``.
        n_kv_heads: key/value heads ``H_kv`` (``None``: ``n_heads``); must divide ``n_heads``.
        qk_head_dim: query/key head dim ``Dqk`` fed to the feature map (``None``: ``head_dim``). Small values
            keep the Taylor map's ``F = 1 + Dqk + Dqk**2`` in check.
        feature_map: ``"elu1"``, ``"relu"`` or ``"taylor"``.
        causal: autoregressive (``True``) or bidirectional (``False``; the only mode that takes ``context``).
        impl: form of the op, ``"auto"``, ``"recurrent"``, ``"parallel"`` or ``"chunked"``; the module's
            ``impl`` attribute may be reassigned later.
        chunk_size: chunk length of the chunked form.
        eps: added to the normaliser ``phi(q) . z``.
        rope: rotate queries and keys by RoPE at absolute positions before the feature map (even ``Dqk``).
        dropout: dropout probability on the per-head attention output, training only.
        bias: biases in the projections.
    """

    d_model: int
    n_heads: int
    head_dim: int | None = None
    n_kv_heads: int | None = None
    qk_head_dim: int | None = None
    feature_map: FeatureMapName = "elu1"
    causal: bool = True
    impl: LinearImpl = "auto"
    chunk_size: int = 64
    eps: float = 1e-6
    rope: bool = False
    dropout: float = 0.0
    bias: bool = False

    def __post_init__(self) -> None:
        check_head_geometry(self.d_model, self.n_heads, self.head_dim, self.n_kv_heads)
        if self.qk_head_dim is not None:
            check_int("qk_head_dim", self.qk_head_dim, 1)
        if self.feature_map not in feature_map_names():
            raise ValueError(f"feature_map must be one of {feature_map_names()}, got {self.feature_map!r}")
        check_bool("causal", self.causal)
        if self.impl not in LINEAR_IMPLS:
            raise ValueError(f"impl must be one of {LINEAR_IMPLS}, got {self.impl!r}")
        check_int("chunk_size", self.chunk_size, 1)
        check_float("eps", self.eps, low=0, high=math.inf)
        check_bool("rope", self.rope)
        if self.rope and self.resolved_qk_head_dim % 2:
            raise ValueError(f"rope=True needs an even qk_head_dim, got qk_head_dim={self.resolved_qk_head_dim}")
        check_float("dropout", self.dropout, low=0, high=1)
        check_bool("bias", self.bias)

    @property
    def resolved_qk_head_dim(self) -> int:
        """``qk_head_dim``, or the resolved ``head_dim`` when it is ``None``."""
        return self.qk_head_dim if self.qk_head_dim is not None else self.resolved_head_dim

    @property
    def feature_dim(self) -> int:
        """``F``: the size of the feature map's output per head."""
        return feature_dim(self.feature_map, self.resolved_qk_head_dim)

    def build(self) -> "LinearAttention":
        return LinearAttention(self)


class LinearAttention(AttentionLayer):
    """Multi-head linear attention; see the module docstring.

    Parameters: ``q_proj`` (``d_model -> H Dqk``), ``k_proj`` (``d_model -> H_kv Dqk``), ``v_proj``
    (``d_model -> H_kv Dv``), ``out_proj`` (``H Dv -> d_model``).
    """

    config_class = LinearAttentionConfig
    repr_fields = ("d_model", "n_heads", "n_kv_heads", "head_dim", "qk_head_dim",
                   "feature_map", "causal", "rope", "impl", "chunk_size")
    #: why attention probabilities cannot be captured (:mod:`attnlab.layers.capture`)
    attention_probabilities: str | None = ("linear attention replaces softmax(q k^T) by a kernel feature map; it forms no normalised (T, S) probability matrix")
    impl = Choice(LINEAR_IMPLS, "Form of the op; reassignable to any of :data:`attnlab.ops.linear.LINEAR_IMPLS`.")

    def __init__(self, config: LinearAttentionConfig) -> None:
        super().__init__(config)
        self.qk_head_dim = config.resolved_qk_head_dim
        self.feature_map = config.feature_map
        self.feature_dim = config.feature_dim
        self.causal = config.causal
        self.chunk_size = config.chunk_size
        self.eps = float(config.eps)
        self.rope = config.rope
        H, Hkv, Dqk, Dv = self.n_heads, self.n_kv_heads, self.qk_head_dim, self.head_dim
        self.q_proj = nn.Linear(config.d_model, H * Dqk, bias=config.bias)
        self.k_proj = nn.Linear(config.d_model, Hkv * Dqk, bias=config.bias)
        self.v_proj = nn.Linear(config.d_model, Hkv * Dv, bias=config.bias)
        self.out_proj = nn.Linear(H * Dv, config.d_model, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)
        self.impl = config.impl

    def new_cache(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> RecurrentStateCache:
        """A zero :class:`RecurrentStateCache`; ``device``/``dtype`` default to the parameters'."""
        if not self.causal:
            raise ValueError("cached decoding needs causal=True; this layer is bidirectional (causal=False)")
        w = self.q_proj.weight
        return RecurrentStateCache(batch_size, self.n_heads, self.feature_dim, self.head_dim,
                                   device=w.device if device is None else device,
                                   dtype=w.dtype if dtype is None else dtype)

    def _validate(self, x: object, context: object, cache: object) -> None:
        d = self.d_model
        w = self.q_proj.weight
        x = check_layer_input(x, d_model=d, reference_param=w)
        if context is not None:
            if self.causal:
                raise ValueError("context= (cross-attention) needs causal=False; this layer has causal=True")
            context = check_layer_context(context, d_model=d, batch_size=x.shape[0])
            check_matches_param("context", context, w)
            if cache is not None:
                raise ValueError("cache is not supported together with context (cross-attention)")
        if cache is None:
            return
        if not self.causal:
            raise ValueError("cache needs causal=True; this layer is bidirectional (causal=False)")
        if not isinstance(cache, RecurrentStateCache):
            raise ValueError(f"cache must be a RecurrentStateCache from layer.new_cache(), got {type(cache).__name__}")
        want = (x.shape[0], self.n_heads, self.feature_dim, self.head_dim)
        if cache.shape != want:
            raise ValueError(f"cache must hold a state of shape (B, H, F, Dv)={want}, got {cache.shape}; "
                             f"create it with layer.new_cache(batch_size={x.shape[0]})")
        if cache.dtype != w.dtype:
            raise ValueError(f"cache dtype must be the layer's parameter dtype {w.dtype}, got {cache.dtype}")
        if cache.device.type != w.device.type:
            raise ValueError(f"cache device must be the layer's parameter device {w.device}, got {cache.device}")

    def forward(self, x: Tensor, *, context: Tensor | None = None, cache: RecurrentStateCache | None = None) -> Tensor:
        """Attend from ``x`` ``(B, T, d_model)`` to itself (or, bidirectional only, to ``context`` ``(B, S, d_model)``).

        Args:
            x: the input, in the parameters' dtype and device.
            context: keys and values come from here (cross-attention; needs ``causal=False``; no RoPE).
            cache: from :meth:`new_cache`; ``x`` holds the next ``T`` tokens, at positions from ``cache.seq_len``;
                the cache's state is read and replaced.

        Returns:
            ``(B, T, d_model)``.
        """
        self._validate(x, context, cache)
        B, T, _ = x.shape
        H, Hkv, Dqk, Dv = self.n_heads, self.n_kv_heads, self.qk_head_dim, self.head_dim
        src = x if context is None else context
        S = src.shape[1]
        q = self.q_proj(x).view(B, T, H, Dqk).transpose(1, 2)  # (B, H, T, Dqk)
        k = self.k_proj(src).view(B, S, Hkv, Dqk).transpose(1, 2)  # (B, H_kv, S, Dqk)
        v = self.v_proj(src).view(B, S, Hkv, Dv).transpose(1, 2)  # (B, H_kv, S, Dv)
        offset = 0 if cache is None else cache.seq_len
        if self.rope and context is None:
            q = apply_rope(q, offset)
            k = apply_rope(k, offset)
        out, state = linear_attention(
            q, k, v,
            feature_map=self.feature_map,  # type: ignore[arg-type]
            causal=self.causal,
            initial_state=None if cache is None else cache.state,
            impl=self._impl,  # type: ignore[arg-type]
            chunk_size=self.chunk_size,
            eps=self.eps,
        )  # (B, H, T, Dv)
        if cache is not None:
            cache.update(state, T)
        out = self.drop(out.transpose(1, 2).reshape(B, T, H * Dv))  # (B, T, H Dv)
        return self.out_proj(out)  # (B, T, d_model)


_BACKENDS = ("recurrent", "parallel", "chunked")  # the recurrent loop is the specification, so it comes first
_VERIFY = {"chunk_size": 4}  # at verify's T=13: chunks of 4, 4, 4, 1, so the chunked form really chunks

for _name, _description, _defaults in (
    ("linear", "linear attention, phi = elu + 1 (Katharopoulos et al. 2020); recurrent-state cache",
     {"feature_map": "elu1"}),
    ("linear-relu", "linear attention, phi = relu; recurrent-state cache", {"feature_map": "relu"}),
    ("based", "Based's Taylor linear attention, phi.phi = 1 + s + s^2/2, q/k dim 16; recurrent-state cache",
     {"feature_map": "taylor", "qk_head_dim": 16}),
):
    register(MechanismSpec(
        name=_name,
        description=_description,
        make_config=LinearAttentionConfig,
        causal=True,
        cache="recurrent",
        backends=_BACKENDS,
        defaults=_defaults,
        verify_options=dict(_VERIFY),
    ))
