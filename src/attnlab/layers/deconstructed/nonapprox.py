"""``decon_nonapprox``: the Non-approximate variant of "Deconstructing Attention", which relaxes the Mathematical
Form (paper section 3.3, Eq. 7-8, recurrent form Eq. 18; spec 3.4).

Shape legend: B batch, H heads, T query positions, S key positions, D head dim, C ``d_model``.

    Q = SiLU(H W_Q);  K = H W_K;  V = H W_V
    s_j  = q_j . k_j / sqrt(D)                          one score per position and head      # (B, H, T)
    A_ij = exp(s_j) / sum_{m <= i} exp(s_m)  (j <= i)    a causal softmax over keys only
    O = concat_heads(A V) W_O

Each key is scored by its own self-gated product; the query only decides which keys are visible
(``A_ij / A_ik = exp(s_j - s_k)``). Forms, by how they execute:

* ``"recurrent"`` (the specification, Eq. 18 with Eq. 7's scale): a loop over time carrying a running max ``m``,
  numerator ``n`` ``(B, H, D)`` and denominator ``z`` ``(B, H)``, so no exponential overflows however large the
  scores (``exp(s - m) <= 1``). This state is the decoding cache (:class:`RunningSoftmaxCache`), two scalars and one
  head-sized vector per head as in the paper's Tbl. 8 (spec 3.4).
* ``"parallel"``: the masked softmax over the broadcast scores ``S[i, j] = s_j``, ``O(T^2)``.

RoPE (``rope``, default on as the LM sets it) rotates ``q_j`` and ``k_j`` by the same angle, so it cancels in
``q_j . k_j`` (spec 3.4); the flag exists so that this can be tested. Learned: W_Q, W_K, W_V, W_O (``4 C^2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab._validation import check_layer_input
from attnlab.layers._common import AttentionLayer, Choice
from attnlab.layers.deconstructed._common import (DeconRopeConfig, HeadStateCache, QKVOProjections, merge_heads,
                                                  rope_if, split_heads)
from attnlab.layers.registry import MechanismSpec, register

__all__ = ["NonApproxConfig", "NonApproxAttention", "RunningSoftmaxCache", "self_gated_scores",
           "nonapprox_parallel", "nonapprox_recurrent", "NONAPPROX_IMPLS"]

NonApproxImpl = Literal["recurrent", "parallel"]
NONAPPROX_IMPLS: tuple[str, ...] = ("recurrent", "parallel")


def self_gated_scores(q: Tensor, k: Tensor) -> Tensor:
    """``s_j = q_j . k_j / sqrt(D)`` for ``q``, ``k`` ``(B, H, T, D)`` (``q`` already through SiLU): ``(B, H, T)``."""
    return (q * k).sum(-1) / math.sqrt(q.shape[-1])


def nonapprox_parallel(s: Tensor, v: Tensor) -> Tensor:
    """``O(T^2)`` form: ``A[i, j] = softmax_{j <= i}(s_j)``; ``s`` ``(B, H, T)``, ``v`` ``(B, H, T, D)``."""
    T = s.shape[-1]
    visible = torch.ones(T, T, dtype=torch.bool, device=s.device).tril()  # (T, T)
    scores = s[..., None, :].expand(*s.shape[:-1], T, T).masked_fill(~visible, float("-inf"))  # (B, H, T, T)
    return torch.softmax(scores, dim=-1) @ v  # (B, H, T, D)


def nonapprox_recurrent(s: Tensor, v: Tensor, state: tuple[Tensor, Tensor, Tensor]
                        ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Eq. 18 with a running max, one position at a time. ``state = (n (B, H, D), z (B, H), m (B, H))`` (start:
    zeros, zeros, ``-inf``); returns the outputs ``(B, H, T, D)`` and the final state."""
    n, z, m = state
    outs = []
    for t in range(s.shape[-1]):
        st = s[..., t]  # (B, H)
        m_new = torch.maximum(m, st)
        decay = torch.exp(m - m_new)  # (B, H); exp(-inf) = 0 for the empty state
        w = torch.exp(st - m_new)  # (B, H), <= 1
        n = n * decay[..., None] + w[..., None] * v[:, :, t]  # (B, H, D)
        z = z * decay + w
        m = m_new
        outs.append(n / z[..., None])
    return torch.stack(outs, dim=2), (n, z, m)  # (B, H, T, D)


class RunningSoftmaxCache(HeadStateCache):
    """Decoding state of :class:`NonApproxAttention`: numerator ``n`` ``(B, H, D)``, denominator ``z`` ``(B, H)``
    and running max ``m`` ``(B, H)`` after every position consumed so far."""

    @property
    def state(self) -> tuple[Tensor, Tensor, Tensor]:
        return self._n, self._z, self._m

    def update(self, state: tuple[Tensor, Tensor, Tensor], n_tokens: int) -> None:
        self._n, self._z, self._m = state
        self._seq_len += n_tokens

    def memory_bytes(self) -> int:
        return self._nbytes(self._n, self._z, self._m)

    def reset(self) -> None:
        B, H, D = self.batch_size, self.n_heads, self.head_dim
        kw = dict(device=self.device, dtype=self.dtype)
        self._n = torch.zeros(B, H, D, **kw)  # (B, H, D)
        self._z = torch.zeros(B, H, **kw)  # (B, H)
        self._m = torch.full((B, H), float("-inf"), **kw)  # (B, H)
        self._seq_len = 0

    def __repr__(self) -> str:
        return f"RunningSoftmaxCache(B={self.batch_size}, H={self.n_heads}, D={self.head_dim}, seq_len={self._seq_len})"


@dataclass(kw_only=True)
class NonApproxConfig(DeconRopeConfig):
    """Configuration of :class:`NonApproxAttention`.

    Attributes:
        d_model, n_heads, head_dim: head geometry (``head_dim=None``: ``d_model // n_heads``).
        rope: RoPE on q and k (cancels in ``q_j . k_j``; kept so that this is testable).
        rope_base: RoPE base.
        impl: ``"recurrent"`` (the specification) or ``"parallel"``; reassignable on the layer.
    """

    impl: NonApproxImpl = "parallel"

    def check(self) -> None:
        if self.impl not in NONAPPROX_IMPLS:
            raise ValueError(f"impl must be one of {NONAPPROX_IMPLS}, got {self.impl!r}")


class NonApproxAttention(AttentionLayer):
    """Self-gated, query-free causal softmax over keys; see the module docstring."""

    config_class = NonApproxConfig
    repr_fields = ("d_model", "n_heads", "head_dim", "rope", "impl")
    attention_probabilities: str | None = "not wired to capture_attention; use layer.attention_map(x)"
    impl = Choice(NONAPPROX_IMPLS, "Form: 'recurrent' (the specification) or 'parallel'.")

    def __init__(self, config: NonApproxConfig) -> None:
        super().__init__(config)
        QKVOProjections.attach(self, config.d_model, self.n_heads, self.head_dim)
        self.rope, self.rope_base = config.rope, float(config.rope_base)
        self.impl = config.impl

    def new_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> RunningSoftmaxCache:
        w = self.q_proj.weight
        return RunningSoftmaxCache(batch_size, self.n_heads, self.head_dim,
                                   device=w.device if device is None else device, dtype=w.dtype if dtype is None else dtype)

    def scores(self, x: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        """``s`` ``(B, H, T)`` and ``v`` ``(B, H, T, D)`` of ``x`` at positions from ``offset``."""
        q = F.silu(split_heads(self.q_proj(x), self.n_heads))  # (B, H, T, D): SiLU on Q only (Eq. 8)
        k = split_heads(self.k_proj(x), self.n_heads)  # (B, H, T, D)
        q, k = rope_if(q, self.rope, offset, self.rope_base), rope_if(k, self.rope, offset, self.rope_base)
        return self_gated_scores(q, k), split_heads(self.v_proj(x), self.n_heads)

    def attention_map(self, x: Tensor) -> Tensor:
        """The causal map ``A`` ``(B, H, T, T)`` of ``x`` (for tests and diagnostics)."""
        s, _ = self.scores(x)
        T = s.shape[-1]
        eye = torch.eye(T, dtype=s.dtype, device=s.device).expand(*s.shape[:-1], T, T)
        return nonapprox_parallel(s, eye)  # (B, H, T, T): A @ I

    def forward(self, x: Tensor, *, context: Tensor | None = None,
                cache: RunningSoftmaxCache | None = None) -> Tensor:
        """``(B, T, C) -> (B, T, C)``; with ``cache`` the input continues the cached sequence."""
        check_layer_input(x, d_model=self.d_model, reference_param=self.q_proj.weight)
        if context is not None:
            raise ValueError("decon_nonapprox has no cross-attention: context must be None")
        if cache is not None:
            if not isinstance(cache, RunningSoftmaxCache):
                raise ValueError(f"cache must be a RunningSoftmaxCache from layer.new_cache(), got "
                                 f"{type(cache).__name__}")
            if cache.batch_size != x.shape[0]:
                raise ValueError(f"cache holds batch_size={cache.batch_size}, x has B={x.shape[0]}")
        offset = 0 if cache is None else cache.seq_len
        s, v = self.scores(x, offset)
        if cache is not None or self._impl == "recurrent":
            state = cache.state if cache is not None else RunningSoftmaxCache(
                x.shape[0], self.n_heads, self.head_dim, device=x.device, dtype=x.dtype).state
            out, state = nonapprox_recurrent(s, v, state)
            if cache is not None:
                cache.update(state, x.shape[1])
        else:
            out = nonapprox_parallel(s, v)
        return self.out_proj(merge_heads(out))  # (B, T, C)


register(MechanismSpec(
    name="decon_nonapprox",
    description="Deconstructing Attention: self-gated query-free softmax over keys (Eq. 7-8); running-softmax state",
    make_config=NonApproxConfig,
    causal=True,
    cache="running-softmax",
    backends=NONAPPROX_IMPLS,
))
