"""``decon_rndembqk`` and ``decon_fixedseqqk``: the two variants of "Deconstructing Attention" that relax
Sequence-Dependency (paper section 3.4, Eq. 9-12; spec 3.5-3.6). One layer class serves both: they differ only in
where their model's *fixed stream* starts.

Shape legend: B batch, H heads, T query positions, S key positions (``offset + T``), D head dim, C ``d_model``,
L length of the fixed stream (the model's ``context_len``, the spec's ``L_max``).

    X = Norm_l(x^(l))[:S]       the fixed stream entering this block, normalised by the block's own pre-norm
    Q = X W_Q;  K = X W_K       (RoPE) -- independent of the input
    V = H W_V                   from the real input
    A = causal softmax(Q K^T / sqrt(D));   O = concat_heads(A V) W_O

The fixed stream ``x^(1) = eps`` (``decon_rndembqk``: ``eps ~ N(0, sigma^2)``, a frozen, persistent buffer of the
model) or ``x^(1) = Emb(t_s)`` (``decon_fixedseqqk``: a frozen id buffer through the model's own embedding), then
``x^(l+1) = Block_l(x^(l))`` through the model's own blocks: :class:`attnlab.models.lm.fixed_stream.FixedStream`
runs it and passes each layer its ``x^(l)`` as ``inputs=MixerInputs(fixed_hidden=..., norm=block.attn_norm)``.
In the stream's own row, ``x`` and ``X`` coincide, so the layer is Standard self-attention there (spec 3.5).
The layer's options ``sigma``, ``stream_seed`` and ``fixed_stream_grad`` configure that model-level stream.

Called without ``inputs`` (outside a model: ``attnlab verify``, ``attnlab bench``), the layer is layer 1 of a model
whose stream starts at its own ``eps`` (``sigma``, ``stream_seed``), normalised by a unit-weight RMSNorm (the
pre-norm at initialisation). That ``eps`` is regenerated on demand in blocks of 256 rows from the seed (not a
parameter, not saved), so it has no length limit and is the same for every length (prefix consistent).

Learned: W_Q, W_K, W_V, W_O (``4 C^2``, Standard's). Decoding (spec 3.8, "shared K + V cache"):
:class:`FixedMapCache` holds the fixed queries and keys of all ``L`` positions, computed once from the stream at
prefill (one copy for the batch), and the values of each row; later calls need no stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab._validation import check_bool, check_float, check_int, check_layer_input
from attnlab.layers._common import AttentionLayer
from attnlab.layers.deconstructed._common import (DeconRopeConfig, HeadStateCache, MixerInputs, QKVOProjections,
                                                  causal_softmax_probs, check_inputs, merge_heads, rope_if, split_heads)
from attnlab.layers.registry import MechanismSpec, register

__all__ = ["FixedMapConfig", "FixedMapAttention", "FixedMapCache", "standalone_eps"]

StreamKind = Literal["random", "text"]
_BLOCK = 256  # rows of the standalone eps generated per seed


def standalone_eps(L: int, d_model: int, *, sigma: float, seed: int, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """``(L, d_model)`` rows ``~ N(0, sigma^2)``; block ``b`` of 256 rows from seed ``(seed, b)``, so that any length
    gives the same first rows."""
    blocks = []
    for b in range(-(-L // _BLOCK)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + b)
        blocks.append(torch.randn(_BLOCK, d_model, generator=g, dtype=torch.float64, device="cpu"))
    return (torch.cat(blocks)[:L] * sigma).to(device=device, dtype=dtype)


class FixedMapCache(HeadStateCache):
    """Decoding state of :class:`FixedMapAttention`: the fixed queries and keys ``(1, H, L, D)`` of every stream
    position (shared by the batch; set at the first call) and the values ``(B, H, S, D)`` seen so far."""

    def __init__(self, batch_size: int, n_heads: int, head_dim: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(check_int("batch_size", batch_size, 1), n_heads, head_dim, device=device, dtype=dtype)

    @property
    def fixed_qk(self) -> tuple[Tensor, Tensor] | None:
        """``(q, k)`` of the whole fixed stream, or ``None`` before the first call."""
        return self._qk

    def set_fixed_qk(self, q: Tensor, k: Tensor) -> None:
        self._qk = (q, k)

    def append_values(self, v: Tensor) -> Tensor:
        """Store ``v`` ``(B, H, T, D)``; return every value so far ``(B, H, S, D)`` and advance ``seq_len``."""
        self._v = v if self._v is None else torch.cat([self._v, v], dim=2)
        self._seq_len += v.shape[2]
        return self._v

    def memory_bytes(self) -> int:
        return self._nbytes(self._v, *(self._qk or ()))

    def reset(self) -> None:
        self._qk: tuple[Tensor, Tensor] | None = None
        self._v: Tensor | None = None
        self._seq_len = 0

    def __repr__(self) -> str:
        L = None if self._qk is None else self._qk[0].shape[2]
        return f"FixedMapCache(B={self.batch_size}, H={self.n_heads}, D={self.head_dim}, L={L}, seq_len={self._seq_len})"


@dataclass(kw_only=True)
class FixedMapConfig(DeconRopeConfig):
    """Configuration of :class:`FixedMapAttention`.

    Attributes:
        d_model, n_heads, head_dim: head geometry.
        stream: where the model's fixed stream starts: ``"random"`` (``decon_rndembqk``: ``eps``) or ``"text"``
            (``decon_fixedseqqk``: ``Emb(t_s)``). Set by the registry entry.
        sigma: std of ``eps`` (spec 3.5 default 0.02, the embedding initialisation scale; not stated in the paper).
        stream_seed: seed of ``eps`` (``"random"``) or of the placeholder ``t_s`` (``"text"``, until the model is given
            a chunk of training text with ``LM.set_fixed_tokens``).
        fixed_stream_grad: the stream carries gradients to the blocks' weights (``False`` detaches it).
        rope: RoPE on the fixed queries and keys (default on in an LM).
        rope_base: RoPE base.
    """

    stream: StreamKind = "random"
    sigma: float = 0.02
    stream_seed: int = 0
    fixed_stream_grad: bool = True

    def check(self) -> None:
        if self.stream not in ("random", "text"):
            raise ValueError(f"stream must be one of ('random', 'text'), got {self.stream!r}")
        check_float("sigma", self.sigma, low=0.0, high=math.inf, low_inclusive=False)
        check_int("stream_seed", self.stream_seed, 0)
        check_bool("fixed_stream_grad", self.fixed_stream_grad)


class FixedMapAttention(AttentionLayer):
    """Causal attention whose map comes from the fixed stream, values from the input; see the module docstring."""

    config_class = FixedMapConfig
    repr_fields = ("d_model", "n_heads", "head_dim", "stream", "rope")
    attention_probabilities: str | None = "not wired to capture_attention; use layer.attention_map(T, inputs)"
    #: what the layer reads from :class:`MixerInputs` (the model passes it)
    mixer_inputs: ClassVar[tuple[str, ...]] = ("fixed_hidden",)

    def __init__(self, config: FixedMapConfig) -> None:
        super().__init__(config)
        QKVOProjections.attach(self, config.d_model, self.n_heads, self.head_dim)
        self.stream = config.stream
        self.rope, self.rope_base = config.rope, float(config.rope_base)

    def new_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> FixedMapCache:
        w = self.q_proj.weight
        return FixedMapCache(batch_size, self.n_heads, self.head_dim, device=w.device if device is None else device,
                             dtype=w.dtype if dtype is None else dtype)

    def fixed_source(self, inputs: MixerInputs | None, S: int, *, like: Tensor, rows: int | None = None) -> Tensor:
        """``X`` ``(L', C)``, ``L' >= S``: the normalised fixed stream (from ``inputs``, else ``rows`` (default
        ``S``) rows of the standalone ``eps``)."""
        if inputs is not None and inputs.fixed_hidden is not None:
            fh = inputs.fixed_hidden
            if not isinstance(fh, Tensor) or fh.ndim != 2 or fh.shape[1] != self.d_model:
                got = tuple(fh.shape) if isinstance(fh, Tensor) else type(fh).__name__
                raise ValueError(f"inputs.fixed_hidden must have shape (L, d_model={self.d_model}), got {got}")
            if S > fh.shape[0]:
                raise ValueError(f"the input reaches position {S} (T plus cached positions) but the fixed sequence has "
                                 f"L_max={fh.shape[0]} positions; the model's context_len bounds T")
            return inputs.normed(fh)
        if inputs is not None and (inputs.token_emb is not None or inputs.norm is not None):
            raise ValueError(f"decon_{'rndembqk' if self.stream == 'random' else 'fixedseqqk'} needs "
                             "inputs.fixed_hidden (the model's fixed stream at this layer), got None")
        cfg = self.config
        eps = standalone_eps(max(S, rows or 0), self.d_model, sigma=cfg.sigma, seed=cfg.stream_seed, device=like.device,
                             dtype=like.dtype)  # (S, C)
        return F.rms_norm(eps, (self.d_model,), eps=1e-5)

    def fixed_qk(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Fixed queries and keys ``(1, H, L', D)`` (RoPE from position 0) of ``X`` ``(L', C)``."""
        q = rope_if(split_heads(self.q_proj(X)[None], self.n_heads), self.rope, 0, self.rope_base)
        k = rope_if(split_heads(self.k_proj(X)[None], self.n_heads), self.rope, 0, self.rope_base)
        return q, k

    def attention_map(self, T: int, inputs: MixerInputs | None = None, *, like: Tensor | None = None) -> Tensor:
        """The map ``(1, H, T, T)``: the same for every input of length ``T`` (spec 9, oracle 11)."""
        like = self.q_proj.weight if like is None else like
        q, k = self.fixed_qk(self.fixed_source(check_inputs(inputs, "decon fixed map"), T, like=like)[:T])
        return causal_softmax_probs(q, k, q_offset=0)

    def forward(self, x: Tensor, *, context: Tensor | None = None, cache: FixedMapCache | None = None,
                inputs: MixerInputs | None = None) -> Tensor:
        """``(B, T, C) -> (B, T, C)``.

        Args:
            x: the layer input ``H`` (values come from it).
            cache: from :meth:`new_cache`; the first call stores the fixed queries and keys of the whole stream given
                (the model passes all ``context_len`` rows at prefill), later calls reuse them.
            inputs: ``MixerInputs(fixed_hidden=x^(l) (L, C), norm=Norm_l)`` from the model; ``None`` outside a model
                (see the module docstring).
        """
        check_layer_input(x, d_model=self.d_model, reference_param=self.q_proj.weight)
        if context is not None:
            raise ValueError("the fixed-map variants have no cross-attention: context must be None")
        check_inputs(inputs, "decon fixed map")
        if cache is not None:
            if not isinstance(cache, FixedMapCache):
                raise ValueError(f"cache must be a FixedMapCache from layer.new_cache(), got {type(cache).__name__}")
            if cache.batch_size != x.shape[0]:
                raise ValueError(f"cache holds batch_size={cache.batch_size}, x has B={x.shape[0]}")
        B, T, _ = x.shape
        offset = 0 if cache is None else cache.seq_len
        S = offset + T
        cached = None if cache is None else cache.fixed_qk
        if cached is not None and (inputs is None or inputs.fixed_hidden is None) and cached[0].shape[2] >= S:
            q_all, k_all = cached  # (1, H, L, D)
        else:
            # standalone decoding keeps a block of rows for the next steps (regenerated when they run out)
            rows = None if cache is None else 2 * max(S, _BLOCK)
            X = self.fixed_source(inputs, S, like=x, rows=rows)  # (L', C)
            if cache is None:
                X = X[:S]  # the top-left T x T block: causality makes it the stream run at length T
            q_all, k_all = self.fixed_qk(X)  # (1, H, L', D)
            if cache is not None:
                cache.set_fixed_qk(q_all, k_all)
        v = split_heads(self.v_proj(x), self.n_heads)  # (B, H, T, D)
        if cache is not None:
            v = cache.append_values(v)  # (B, H, S, D)
        probs = causal_softmax_probs(q_all[:, :, offset:S], k_all[:, :, :S], q_offset=offset)  # (1, H, T, S)
        return self.out_proj(merge_heads(probs @ v))  # (B, T, C)


for _name, _stream, _what in (
    ("decon_rndembqk", "random", "fixed random embeddings eps (Eq. 9-10)"),
    ("decon_fixedseqqk", "text", "a fixed token sequence Emb(t_s) (Eq. 11-12)"),
):
    register(MechanismSpec(
        name=_name,
        description=f"Deconstructing Attention: Q, K from the model's fixed stream of {_what}, V from the input; "
                    "shared fixed K + V cache",
        make_config=FixedMapConfig,
        causal=True,
        cache="fixed-map",
        defaults={"stream": _stream},
    ))
