"""Multi-head softmax attention (Vaswani et al. 2017) with GQA/MQA, Luong and Bahdanau scores, masks, RoPE,
cross-attention and key/value caches.

Shape legend: B batch, T query length, S key length (``S == T`` for self-attention, the context length for
cross-attention), H query heads, H_kv key/value heads (``H % H_kv == 0``), D head dim, A additive hidden size.

One :class:`MultiHeadAttention` serves every classic softmax mechanism of :mod:`attnlab.layers.classic`; what
differs between them is the config (score, mask, number of key/value heads). The attention itself is always
:func:`attnlab.ops.softmax.softmax_attention`.

Masks and positions
    The configured ``mask`` governs **self-attention** and is evaluated at absolute positions: in cached
    decoding the new tokens start at ``cache.seq_len``, for the mask and for RoPE alike. Attention to a
    ``context`` (cross-attention) is unmasked unless a per-call ``mask=`` is given, and never uses RoPE: query
    and context positions are unrelated.

Padding and non-finite values
    When the effective mask carries ``key_valid`` (a :func:`~attnlab.masks.key_padding` mask, alone or AND-ed
    with the layer's own, as the encoder-decoder passes it to its encoder and cross-attention layers), the keys
    and values it hides from every query are set to 0 before attending (uncached calls, ``context`` and
    ``context_kv`` included). Outputs are unchanged, but a NaN or inf held at a padded position (a padded encoder
    row, a padded context row) can no longer reach a real position on any backend: SDPA and FlexAttention compute
    ``p @ v`` with ``p = 0`` at masked keys, and ``0 * NaN = NaN``. Without it (measured on CPU, torch 2.13), a NaN
    in one padded value reached every output of all three backends, and a NaN in one padded key every output of
    SDPA (its additive ``-inf`` mask: ``NaN + -inf = NaN``). The guard covers outputs and the gradients of
    the queries, keys and values; the projection's weight gradient still multiplies the zero gradient of a
    padded row by the row itself, so a NaN *input* row makes it NaN. Other masks (causal, sliding window, ...)
    and cached calls get no such guard: see each backend's module docstring for what reaches a visible output.

Cross-attention to a fixed context (encoder-decoder decoding)
    :meth:`MultiHeadAttention.project_context` returns the context's keys and values ``(B, H_kv, S, D)``;
    ``forward(x, context_kv=(k, v))`` attends to them without projecting the context again. Decoding one token at
    a time against an encoder's output thus projects the source once per sequence instead of once per step, and
    gives the same output as ``forward(x, context=context)`` (the latter calls ``project_context`` itself).

Cached decoding (``new_cache`` + ``forward(x, cache=cache)``)
    * Causal masks (standard, sliding window, strided, fixed, BigBird, documents & causal): any split works,
      prefill of ``m`` tokens then one at a time equals the parallel output.
    * Masks with ``window`` get a :class:`~attnlab.cache.kv.SlidingKVCache` holding only ``window`` positions;
      the kept keys are masked at their true absolute positions.
    * Non-causal masks (prefix-LM): the cached output equals the parallel one only if no query of a call can
      see a key that a later call brings. For ``prefix_lm(p)`` that means: **the first call must contain the
      whole prefix** (``T >= p``); afterwards the mask is causal and tokens may come one at a time. The layer
      enforces this (``ValueError``) by probing whether any query of the call sees the next, not yet cached
      position, which is exact for prefix-LM and a necessary condition for any mask.
    * With ``impl="auto"``, a one-token cached step runs on SDPA (a ``(1, S)`` mask row is cheap; FlexAttention
      would need a new BlockMask per step). Explicit ``impl`` values are always honoured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab._validation import (
    check_bool,
    check_float,
    check_head_geometry,
    check_int,
)
from attnlab.cache.kv import KVCache, SlidingKVCache, shifted_mask
from attnlab.layers import capture as _capture
from attnlab.layers._common import AttentionLayer, Choice, HeadGeometry
from attnlab.layers._mha_checks import check_call
from attnlab.layers.rope import apply_rope, pair_rows, rope_freqs, rotate_pairs
from attnlab.masks import Mask, as_mask, causal
from attnlab.ops.softmax import (
    SCORES,
    SOFTMAX_IMPLS,
    AdditiveScoreParams,
    GeneralScoreParams,
    Score,
    SoftmaxImpl,
    softmax_attention,
)
from attnlab.ops.softmax.sdpa import SDPA_SCORES as _SDPA_SCORES

__all__ = ["MultiHeadAttentionConfig", "MultiHeadAttention"]


@dataclass(kw_only=True)
class MultiHeadAttentionConfig(HeadGeometry):
    """Configuration of :class:`MultiHeadAttention`.

    Attributes:
        d_model: model width, the last dim of the input and the output.
        n_heads: query heads ``H``.
        n_kv_heads: key/value heads ``H_kv`` (``None``: ``n_heads``; fewer: GQA; ``1``: MQA); must divide
            ``n_heads``.
        head_dim: per-head dim ``D``; ``None`` means ``d_model // n_heads`` (then ``n_heads`` must divide
            ``d_model``). With an explicit value the output projection maps ``n_heads * head_dim -> d_model``.
        score: ``"scaled_dot"`` (Vaswani), ``"dot"`` (Luong dot, no scaling), ``"general"`` (Luong general,
            ``q W k^T`` with a learned ``W`` per head), ``"additive"`` (Bahdanau, ``v . tanh(q W_q + k W_k)``).
        additive_dim: hidden size ``A`` of the additive score (``None``: ``head_dim``); only with
            ``score="additive"``.
        mask: the self-attention mask (:mod:`attnlab.masks`), ``None`` for none (bidirectional). Default causal.
            The layer is causal exactly when the mask is (``causal`` property).
        rope: rotate queries and keys with RoPE at their absolute positions (needs an even ``head_dim``).
        rope_base: RoPE frequency base.
        dropout: dropout on the attention weights, in training mode only.
        bias: biases in the input and output projections.
        impl: the backend of :func:`~attnlab.ops.softmax.softmax_attention` (``"auto"``, ``"reference"``,
            ``"sdpa"``, ``"flex"``); the module's ``impl`` attribute may be reassigned later.
        cross: a dedicated cross-attention layer: ``forward`` requires ``context``; ``mask`` must be ``None``
            (or full) and ``rope`` ``False``. A self-attention layer (``cross=False``) also accepts a
            ``context``; ``cross=True`` only makes it mandatory.
    """

    d_model: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    score: Score = "scaled_dot"
    additive_dim: int | None = None
    mask: Mask | None = field(default_factory=causal)
    rope: bool = False
    rope_base: float = 10000.0
    dropout: float = 0.0
    bias: bool = False
    impl: SoftmaxImpl = "auto"
    cross: bool = False

    def __post_init__(self) -> None:
        check_head_geometry(self.d_model, self.n_heads, self.head_dim, self.n_kv_heads)
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if self.additive_dim is not None:
            if self.score != "additive":
                raise ValueError(f"additive_dim is only used with score='additive', got score={self.score!r}")
            check_int("additive_dim", self.additive_dim, 1)
        if self.mask is not None and not isinstance(self.mask, Mask) and callable(self.mask):
            self.mask = as_mask(self.mask)  # a FlexAttention-style mask_mod: no facts assumed (not causal)
        if self.mask is not None and not isinstance(self.mask, Mask):
            raise ValueError(f"mask must be an attnlab.masks.Mask, a mask_mod callable or None, got "
                             f"{type(self.mask).__name__}")
        self.check_rope(base=False)
        check_float("rope_base", self.rope_base, low=1, low_inclusive=False)
        check_float("dropout", self.dropout, low=0, high=1)
        check_bool("bias", self.bias)
        if self.impl not in SOFTMAX_IMPLS:
            raise ValueError(f"impl must be one of {SOFTMAX_IMPLS}, got {self.impl!r}")
        check_bool("cross", self.cross)
        if self.cross:
            if self.mask is not None and not self.mask.full:
                raise ValueError(
                    f"cross=True attends from x to an unrelated context, so mask must be None, got mask={self.mask}"
                )
            if self.rope:
                raise ValueError("rope=True is not supported with cross=True: query and context positions are unrelated")

    @property
    def causal(self) -> bool:
        """Whether self-attention is autoregressive (derived from ``mask``)."""
        return self.mask is not None and self.mask.causal

    def build(self) -> "MultiHeadAttention":
        return MultiHeadAttention(self)


def _zero_hidden_keys(k: Tensor, v: Tensor, key_valid: Tensor) -> tuple[Tensor, Tensor]:
    """Zero the key and value rows that the mask hides from every query (``Mask.key_valid`` False, or beyond it).

    ``k``, ``v``: ``(B, H_kv, S, D)`` at key positions ``0 .. S-1``. The outputs do not change (those keys get
    probability 0), but a NaN or inf held there can no longer reach a visible output through a kernel's
    ``0 * NaN`` (every backend multiplies the zero probabilities by the values).
    """
    B, _, S, _ = k.shape
    rows = key_valid if key_valid.ndim == 2 else key_valid.unsqueeze(0)  # (B or 1, S_valid)
    if rows.shape[0] not in (1, B):
        return k, v  # not this batch's mask; the attention call itself reports the mismatch
    n = min(S, rows.shape[1])
    keep = torch.zeros(rows.shape[0], S, dtype=torch.bool, device=k.device)  # (B or 1, S): beyond S_valid hidden
    keep[:, :n] = rows[:, :n].to(k.device)
    hidden = ~keep[:, None, :, None]  # (B or 1, 1, S, 1)
    return k.masked_fill(hidden, 0.0), v.masked_fill(hidden, 0.0)


class MultiHeadAttention(AttentionLayer):
    """Multi-head softmax attention; see the module docstring for masks, positions and caching.

    Parameters: ``in_proj`` (``d_model -> (H + 2 H_kv) D``, rows ``[q | k | v]``, one fused matmul for
    self-attention; cross-attention multiplies ``x`` by the ``q`` rows and the context by the ``k, v`` rows),
    ``out_proj`` (``H D -> d_model``) and, for ``score="general"``, ``score_weight`` ``(H, D, D)``; for
    ``score="additive"``, ``score_w_q``, ``score_w_k`` ``(H, D, A)`` and ``score_v`` ``(H, A)``.
    """

    config_class = MultiHeadAttentionConfig
    repr_fields = ("d_model", "n_heads", "n_kv_heads", "head_dim", "score", "mask", "rope", "cross", "impl")
    #: attention probabilities can be captured (:mod:`attnlab.layers.capture`)
    attention_probabilities: str | None = None
    impl = Choice(SOFTMAX_IMPLS, "Backend of the softmax op; reassignable to any of "
                                 ":data:`attnlab.ops.softmax.SOFTMAX_IMPLS`.")

    def __init__(self, config: MultiHeadAttentionConfig) -> None:
        super().__init__(config)
        self.mask = config.mask
        self.score = config.score
        self.cross = config.cross
        self.rope = config.rope
        self.rope_base = float(config.rope_base)
        self.dropout = float(config.dropout)
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        self._split = (H * D, Hkv * D, Hkv * D)
        self.in_proj = nn.Linear(config.d_model, (H + 2 * Hkv) * D, bias=config.bias)
        self.out_proj = nn.Linear(H * D, config.d_model, bias=config.bias)
        if self.score == "general":
            # identity (Luong general starts as Luong dot) plus noise, so W is exercised from the start
            w = torch.eye(D).expand(H, D, D) + 0.02 * torch.randn(H, D, D)
            self.score_weight = nn.Parameter(w.clone())  # (H, D, D)
        elif self.score == "additive":
            A = config.additive_dim if config.additive_dim is not None else D
            self.additive_dim = A
            self.score_w_q = nn.Parameter(torch.randn(H, D, A) / math.sqrt(D))  # (H, D, A)
            self.score_w_k = nn.Parameter(torch.randn(H, D, A) / math.sqrt(D))  # (H, D, A)
            self.score_v = nn.Parameter(torch.randn(H, A) / math.sqrt(A))  # (H, A)
        self.impl = config.impl

    # ----------------------------------------------------------------------------------------------------------
    @property
    def causal(self) -> bool:
        return self.mask is not None and self.mask.causal

    def score_params(self) -> GeneralScoreParams | AdditiveScoreParams | None:
        """The learned score parameters in the form :func:`softmax_attention` takes."""
        if self.score == "general":
            return GeneralScoreParams(self.score_weight)
        if self.score == "additive":
            return AdditiveScoreParams(self.score_w_q, self.score_w_k, self.score_v)
        return None

    def new_cache(
        self, batch_size: int, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> KVCache | SlidingKVCache:
        """An empty decoding cache: :class:`SlidingKVCache` for a causal mask with a ``window``, else
        :class:`KVCache`. ``device``/``dtype`` default to the parameters'."""
        if self.cross:
            raise ValueError("a cross-attention layer (cross=True) has no decoding cache")
        if self.mask is None or self.mask.full:
            raise ValueError(
                f"cached decoding needs a mask under which earlier tokens cannot see later ones, got mask={self.mask}"
            )
        w = self.in_proj.weight
        device = w.device if device is None else device
        dtype = w.dtype if dtype is None else dtype
        if self.mask.causal and self.mask.window is not None:
            return SlidingKVCache(self.mask.window, batch_size, self.n_kv_heads, self.head_dim,
                                  device=device, dtype=dtype)
        return KVCache(batch_size, self.n_kv_heads, self.head_dim, device=device, dtype=dtype)

    def project_context(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of a cross-attention ``context`` ``(B, S, d_model)``: ``(k, v)``, each ``(B, H_kv, S, D)``.

        No RoPE (context positions are unrelated to query positions). Pass the pair as ``forward(x,
        context_kv=(k, v))`` to attend to the same context many times without projecting it again.
        """
        w, bias = self.in_proj.weight, self.in_proj.bias
        if not isinstance(context, Tensor) or context.ndim != 3 or context.shape[-1] != self.d_model \
                or context.shape[0] < 1 or context.shape[1] < 1:
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"context must have shape (B >= 1, S >= 1, d_model={self.d_model}), got {got}")
        if context.dtype != w.dtype or context.device != w.device:
            raise ValueError(
                f"context must have the layer's dtype {w.dtype} and device {w.device}, "
                f"got {context.dtype} on {context.device}"
            )
        B, S, _ = context.shape
        Hkv, D = self.n_kv_heads, self.head_dim
        hd = self.n_heads * D
        kv = F.linear(context, w[hd:], None if bias is None else bias[hd:])  # (B, S, 2 H_kv D)
        k, v = kv.split(self._split[1:], dim=-1)  # (B, S, H_kv D) x 2
        k = k.view(B, S, Hkv, D).transpose(1, 2)  # (B, H_kv, S, D)
        v = v.view(B, S, Hkv, D).transpose(1, 2)  # (B, H_kv, S, D)
        return k, v

    def _validate(self, x: object, context: object, cache: object, mask: object, context_kv: object = None) -> None:
        check_call(self, x, context, cache, mask, context_kv)

    def _pair_rows(self, device: torch.device) -> Tensor:
        """``in_proj`` row order with each q and k head in RoPE pair order (:func:`~attnlab.layers.rope.pair_rows`),
        the v rows unchanged; one index tensor per device, made on first use."""
        rows = self.__dict__.setdefault("_pair_rows_by_device", {}).get(device)
        if rows is None:
            n_qk = (self.n_heads + self.n_kv_heads) * self.head_dim
            rows = torch.cat([pair_rows(self.n_heads + self.n_kv_heads, self.head_dim),
                              torch.arange(n_qk, n_qk + self.n_kv_heads * self.head_dim)]).to(device)
            self.__dict__["_pair_rows_by_device"][device] = rows
        return rows

    # ----------------------------------------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        *,
        context: Tensor | None = None,
        cache: KVCache | SlidingKVCache | None = None,
        mask: Mask | None = None,
        context_kv: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Attend from ``x`` ``(B, T, d_model)`` to itself (or to ``context`` ``(B, S, d_model)``).

        Args:
            x: the input, ``(B, T, d_model)``, in the parameters' dtype and device.
            context: keys/values come from here instead of ``x`` (cross-attention; unmasked unless ``mask``).
            cache: from :meth:`new_cache`; ``x`` holds the next ``T`` tokens, at positions from ``cache.seq_len``.
            mask: per-call override of the configured mask (e.g. a document mask for packed sequences, a key
                padding mask), a :class:`~attnlab.masks.Mask` or a FlexAttention-style ``mask_mod`` callable;
                ``None`` keeps the configured one (for ``context``/``context_kv``: no mask).
            context_kv: instead of ``context``, its keys and values ``(k, v)`` from :meth:`project_context`, each
                ``(B, H_kv, S, D)``; the same output as ``context=`` without projecting the context again.

        Returns:
            ``(B, T, d_model)``.
        """
        if mask is not None and not isinstance(mask, Mask) and callable(mask):  # a FlexAttention-style mask_mod
            mask = as_mask(mask)
        self._validate(x, context, cache, mask, context_kv)
        B, T, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        self_attention = context is None and context_kv is None
        offset = 0 if cache is None else cache.seq_len
        if self_attention and self.rope and cache is None and self.score in ("scaled_dot", "dot") \
                and x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled(x.device.type) \
                and not torch.compiler.is_compiling():
            # Queries and keys only meet in q . k, which is unchanged when both permute their dims alike: take the
            # projection's q and k rows in the order that puts each rotate-half pair (i, i + D/2) side by side and
            # rotate the pairs as complex numbers, one kernel each way (layers/rope.py). The same attention up to
            # float rounding; a cache keeps keys in the documented layout, so cached calls take the next branch, and
            # so do autocast (its half-precision projections have no complex dtype) and torch.compile.
            w, bias = self.in_proj.weight, self.in_proj.bias
            rows = self._pair_rows(w.device)
            qk, v = F.linear(x, w.index_select(0, rows), None if bias is None else bias.index_select(0, rows)).split(
                (H + Hkv) * D, dim=-1)  # (B, T, (H + H_kv) D) in pair order, (B, T, H_kv D)
            freqs = rope_freqs(0, T, D, self.rope_base, device=x.device, dtype=x.dtype)  # (T, D/2) complex
            qk = rotate_pairs(qk.view(B, T, H + Hkv, D), freqs[:, None])  # (B, T, H + H_kv, D)
            q, k = (t.transpose(1, 2) for t in qk.split((H, Hkv), dim=2))  # (B, H, T, D), (B, H_kv, T, D)
            v = v.view(B, T, Hkv, D).transpose(1, 2)  # (B, H_kv, T, D)
            m = self.mask if mask is None else mask
        elif self_attention and self.rope:
            # queries and keys are adjacent in the projection: rotate them in one call, in (B, T, heads, D) layout
            qk, v = self.in_proj(x).split((H + Hkv) * D, dim=-1)  # (B, T, (H + H_kv) D), (B, T, H_kv D)
            qk = apply_rope(qk.view(B, T, H + Hkv, D), offset, self.rope_base, seq_dim=-3)  # (B, T, H + H_kv, D)
            q, k = (t.transpose(1, 2) for t in qk.split((H, Hkv), dim=2))  # (B, H, T, D), (B, H_kv, T, D)
            v = v.view(B, T, Hkv, D).transpose(1, 2)  # (B, H_kv, T, D)
            m = self.mask if mask is None else mask
        elif self_attention:
            q, k, v = self.in_proj(x).split(self._split, dim=-1)  # (B, T, H D), (B, T, H_kv D) x 2
            q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, H_kv, T, D)
            v = v.view(B, T, Hkv, D).transpose(1, 2)  # (B, H_kv, T, D)
            m = self.mask if mask is None else mask
        else:
            w, bias = self.in_proj.weight, self.in_proj.bias
            hd = H * D
            q = F.linear(x, w[:hd], None if bias is None else bias[:hd])  # (B, T, H D)
            q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
            k, v = self.project_context(context) if context_kv is None else context_kv  # (B, H_kv, S, D) x 2
            m = mask
        if cache is not None:
            k, v, kv_start = cache.update(k, v)  # (B, H_kv, S', D): keys at absolute kv_start ..
            assert m is not None  # checked in _validate
            if T == 1 and m.plain_causal:
                m = None  # the newest query sees every cached key
            else:
                m = shifted_mask(m, kv_start)

        if cache is None and m is not None and m.key_valid is not None:
            k, v = _zero_hidden_keys(k, v, m.key_valid)  # (B, H_kv, S, D) x 2

        impl = self._impl
        if impl == "auto" and cache is not None and T == 1 and self.score in _SDPA_SCORES:
            # one decoding query: a dense (1, S) mask row is cheap, while "auto" would pick FlexAttention on CUDA
            # for sparse masks and build a new BlockMask at every step
            impl = "sdpa"
        cap = _capture._ACTIVE
        if cap is not None and cap.wants(self):
            from attnlab.ops.softmax.args import SoftmaxArgs
            from attnlab.ops.softmax.reference import reference_softmax_probs
            from attnlab.ops.softmax.scores import default_scale

            args = SoftmaxArgs(mask=m, scale=default_scale(self.score, D), score=self.score,
                               score_params=self.score_params(), q_offset=offset)
            cap.record(self, reference_softmax_probs(q, k, args))  # (B, H, T, S)
        out = softmax_attention(
            q, k, v,
            mask=m,
            score=self.score,
            score_params=self.score_params(),
            q_offset=offset,
            dropout_p=self.dropout if self.training else 0.0,
            impl=impl,  # type: ignore[arg-type]
        )  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H D)
        return self.out_proj(out)  # (B, T, d_model)
