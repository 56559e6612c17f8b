"""CASTLE attention layer: causal attention with lookahead keys (Song et al. 2025, arXiv:2509.07301).

Shape legend: B batch, T sequence length, H heads (``n_heads``), D head dim, d_model model width.

Each head has six projections ``W^{UQ}, W^{UK}, W^{UV}`` (lookahead branch) and ``W^{CQ}, W^{CK}, W^{CV}`` (causal
branch), all fused into one bias-free matmul ``d_model -> 6 H D`` (rows ``[q_u | k_u | v_u | q_c | k_c | v_c]``),
followed by ``W^O: H D -> d_model`` (no bias). Parameters: exactly ``7 H D d_model``.

RoPE (project decision, spec section 5.1; the paper does not say): rotate ``q^C, k^C, q^U, k^U`` **and** ``v^U``
(not ``v^C``) at their absolute positions, so that both ``q^C_t . v^U_j`` and ``q^U_s . k^U_j`` depend only on
relative position. ``rope=False`` switches it off. In cached decoding positions start at ``cache.seq_len``.

Parameter parity with standard attention (4 H D d_model): ``heads_for_parity(n) = max(1, round(4 n / 7))`` at
the same head dim, e.g. 14 -> 8 (exact parity, paper's S) and 16 -> 9 (paper's M/L/XL, slightly fewer
parameters). ``4 n / 7`` is never exactly halfway between integers (7 is odd), so the rounding has no ties.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab._validation import check_float, check_head_geometry, check_int, check_matches_param
from attnlab.cache.uqkv import UQKVCache
from attnlab.layers._common import AttentionLayer, HeadGeometry
from attnlab.layers.registry import MechanismSpec, register
from attnlab.layers.rope import apply_rope
from attnlab.ops.castle.api import (
    IMPLS,
    CastleImpl,
    castle_attention,
    triton_available,
    validate_chunk_size,
    validate_lookahead,
)

__all__ = ["CastleConfig", "CastleAttentionConfig", "CastleAttention", "heads_for_parity"]


def heads_for_parity(n_standard_heads: int) -> int:
    """CASTLE heads with the parameter count of ``n_standard_heads`` standard heads: ``max(1, round(4 n / 7))``.

    Standard attention has ``4 n D d_model`` parameters, CASTLE ``7 n D d_model``. 14 -> 8 (exact), 16 -> 9 (4/7 of
    16 is 9.14: 1.6 % fewer parameters than the baseline), as in the paper's Table 4.
    """
    check_int("n_standard_heads", n_standard_heads, 1)
    return max(1, round(4 * n_standard_heads / 7))


@dataclass(kw_only=True)
class CastleConfig(HeadGeometry):
    """Configuration of :class:`CastleAttention`.

    Attributes:
        d_model: model width.
        n_heads: CASTLE heads ``H`` (see :func:`heads_for_parity` to match a standard layer's parameters).
        head_dim: per-head dim ``D``; ``None`` means ``d_model // n_heads`` (which must divide). With an explicit
            value ``W^O`` maps ``H D -> d_model`` (the paper's M: 9 heads of 64 -> 1024).
        lookahead: CASTLE-SWL's ``W``, the paper's W (eq. 9): the lookahead key of token ``s`` summarises
            ``x_{s+1..s+W}``; the current token is not counted, so ``0`` is allowed (standard causal attention).
            ``None``: full CASTLE. The paper uses 128 for S, 512 otherwise. Not a ``window``: everywhere else in
            attnlab a ``window`` counts the current token (``sliding-window``'s ``window=w`` sees ``i-w+1 .. i``).
        rope: RoPE on ``q^C, k^C, q^U, k^U, v^U`` (needs an even head dim).
        rope_base: RoPE frequency base.
        impl: backend of :func:`~attnlab.ops.castle.castle_attention` (``"auto"``, ``"reference"``,
            ``"parallel"``, ``"chunked"``, ``"triton"``); the module's ``impl`` may be reassigned later.
        chunk_size: positions per chunk of the chunked form (and of the prefill's lookahead-key pass); not a
            context length.
        dropout: dropout on the layer output (after ``W^O``), training mode only. The attention probabilities are
            not dropped: the blocked and Triton forms have no dropout.
    """

    d_model: int
    n_heads: int
    head_dim: int | None = None
    lookahead: int | None = None
    rope: bool = True
    rope_base: float = 10000.0
    impl: CastleImpl = "auto"
    chunk_size: int = 64
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_head_geometry(self.d_model, self.n_heads, self.head_dim)
        validate_lookahead(self.lookahead)
        self.check_rope(base=False)
        check_float("rope_base", self.rope_base, low=1, low_inclusive=False)
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        validate_chunk_size(self.chunk_size)
        check_float("dropout", self.dropout, low=0, high=1)

    def build(self) -> "CastleAttention":
        return CastleAttention(self)


CastleAttentionConfig = CastleConfig
"""Alias of :class:`CastleConfig`, named like ``MultiHeadAttentionConfig`` and ``LinearAttentionConfig``."""


class CastleAttention(AttentionLayer):
    """Multi-head CASTLE (eq. 14): ``Concat(head_1 .. head_H) W^O``; see the module docstring."""

    config_class = CastleConfig
    repr_fields = ("d_model", "n_heads", "head_dim", "lookahead", "rope", "impl")
    #: why attention probabilities cannot be captured (:mod:`attnlab.layers.capture`)
    attention_probabilities: str | None = ("CASTLE normalises causal and lookahead scores jointly (2 T columns per row); it has no single (T, S) softmax over the keys")

    def __init__(self, config: CastleConfig) -> None:
        super().__init__(config)
        self.lookahead = config.lookahead
        self.rope = config.rope
        self.rope_base = float(config.rope_base)
        self.impl: str = config.impl
        self.chunk_size = config.chunk_size
        HD = self.n_heads * self.head_dim
        self.in_proj = nn.Linear(config.d_model, 6 * HD, bias=False)  # rows [q_u | k_u | v_u | q_c | k_c | v_c]
        self.out_proj = nn.Linear(HD, config.d_model, bias=False)
        self.drop = nn.Dropout(config.dropout)

    heads_for_parity = staticmethod(heads_for_parity)

    def project(self, x: Tensor, offset: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The six per-head projections of ``x`` ``(B, T, d_model)``, each ``(B, H, T, D)``, RoPE applied at
        positions ``offset .. offset + T - 1`` (to ``q_u, k_u, v_u, q_c, k_c``; never to ``v_c``)."""
        B, T, _ = x.shape
        H, D = self.n_heads, self.head_dim
        proj = self.in_proj(x).view(B, T, 6, H, D).permute(2, 0, 3, 1, 4)  # (6, B, H, T, D)
        q_u, k_u, v_u, q_c, k_c, v_c = proj.unbind(0)
        if self.rope:
            q_u, k_u, v_u, q_c, k_c = (apply_rope(t, offset, self.rope_base) for t in (q_u, k_u, v_u, q_c, k_c))
        return q_u, k_u, v_u, q_c, k_c, v_c

    def new_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> UQKVCache:
        """An empty :class:`~attnlab.cache.uqkv.UQKVCache` for this layer (defaults: the layer's device and dtype)."""
        w = self.in_proj.weight
        return UQKVCache(batch_size, self.n_heads, self.head_dim, lookahead=self.lookahead,
                         device=w.device if device is None else device, dtype=w.dtype if dtype is None else dtype)

    def forward(self, x: Tensor, *, context: Tensor | None = None, cache: UQKVCache | None = None) -> Tensor:
        """``x`` ``(B, T, d_model)`` -> ``(B, T, d_model)``; with ``cache``, ``x`` holds the next tokens and the cache
        is updated in place (an empty cache is prefilled in one pass, later tokens are decoded one by one)."""
        if context is not None:
            raise ValueError("CASTLE is causal self-attention: context (cross-attention) is not supported")
        if not isinstance(x, Tensor) or x.ndim != 3 or x.shape[-1] != self.d_model or x.shape[1] < 1:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, T >= 1, d_model={self.d_model}), got {shape}")
        # dtype/device mismatches would otherwise surface as a RuntimeError from the first matmul
        check_matches_param("x", x, self.in_proj.weight)
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        B, T, _ = x.shape
        if cache is None:
            heads = castle_attention(*self.project(x), lookahead=self.lookahead,  # type: ignore[arg-type]
                                     impl=self.impl, chunk_size=self.chunk_size)  # (B, H, T, D)
        else:
            if not isinstance(cache, UQKVCache):
                raise ValueError(f"cache must be a UQKVCache from new_cache(), got {type(cache).__name__}")
            if cache.lookahead != self.lookahead:
                raise ValueError(f"cache was built for lookahead={cache.lookahead}, but this layer has "
                                 f"lookahead={self.lookahead}")
            heads = cache.extend(*self.project(x, cache.seq_len), impl=self.impl,  # type: ignore[arg-type]
                                 chunk_size=self.chunk_size)  # (B, H, T, D)
        out = heads.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H D)
        return self.drop(self.out_proj(out))


def _backends() -> tuple[str, ...]:
    base = ("reference", "parallel", "chunked")
    return base + ("triton",) if triton_available() else base


# Options renamed so that each name has one meaning across attnlab: a ``window`` counts the current token everywhere
# else, and ``block_size`` was also the LM's context length.
_RENAMED = {
    "window": ("lookahead", "the paper's W: a lookahead key covers the next W tokens, the current token not counted"),
    "block_size": ("chunk_size", "positions per chunk of the chunked form"),
}

_CASTLE = register(MechanismSpec(
    name="castle",
    description="CASTLE: causal attention with lookahead keys (Song et al. 2025), 7 n d d_model parameters",
    make_config=CastleConfig,
    causal=True,
    cache="uq-kv",
    backends=_backends(),
    heads_for_parity=heads_for_parity,
    renamed=_RENAMED,
))
register(dataclasses.replace(
    _CASTLE,
    name="castle-swl",
    description="CASTLE-SWL: each lookahead key covers only the next W tokens (lookahead=W, default 128)",
    defaults={"lookahead": 128},
    verify_options={"lookahead": 3},
))
