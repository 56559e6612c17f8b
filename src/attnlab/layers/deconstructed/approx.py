"""``decon_approx``: the Approximate variant of "Deconstructing Attention", which relaxes the Mathematical Form
(paper section 3.3, Eq. 6; recurrent form Appx I, Eq. 14-17; spec 3.3).

Shape legend: B batch, H heads, T query positions, D head dim, F = 1 + D + D^2 (Taylor features), C ``d_model``.

Q, K, V, W_O are Standard's (``4 C^2``). Two forms of the map (``form=``):

* ``"taylor"`` (default, spec's form T; the Based construction the paper cites, Arora et al. 2024)::

      s_ij = q_i . k_j / sqrt(D)   (RoPE on q, k);   w_ij = 1 + s_ij + s_ij^2 / 2  (>= 1/2)
      A_ij = w_ij / sum_{m <= i} w_im  (j <= i);     O = concat_heads(A V) W_O

  computed by :func:`attnlab.ops.linear.linear_attention` with the ``"taylor"`` feature map
  (``phi(q) . phi(k) = 1 + s + s^2/2`` exactly); its recurrent state ``(B, H, F, D)`` is the decoding cache
  (:class:`~attnlab.cache.RecurrentStateCache`). Forms ``"recurrent"`` (the specification), ``"parallel"``,
  ``"chunked"``.
* ``"printed"`` (spec's form P, Eq. 14-17 as printed; a sensitivity option): three separately normalised terms::

      o_i = o0_i + o1_i + o2_i
      o0_i = (sum_{j <= i} v_j) / i
      o1_i = q_i (sum_{j <= i} k_j^T v_j) / (q_i . sum_{j <= i} k_j)
      o2_i = q^_i (sum_{j <= i} k^_j^T v_j) / (q^_i . sum_{j <= i} k^_j),   q^ = (q * q)/sqrt(2), k^ = (k * k)/sqrt(2)

  No ``1/sqrt(D)``; element-wise squares (spec's reading). o1/o2's denominators can be zero or negative: they keep
  their sign and are clamped to ``|den| >= den_eps`` (attnlab proposal, spec 3.3). Its recurrent state
  (``sum v``, ``sum k``, ``sum k^`` and per head ``sum k^T v``, ``sum k^^T v``) is the paper's Tbl. 8 cache
  (:class:`PrintedTaylorCache`). Forms ``"recurrent"`` and ``"parallel"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from attnlab._validation import check_float, check_layer_input
from attnlab.cache.base import AttentionCache
from attnlab.cache.recurrent import RecurrentStateCache
from attnlab.layers._common import AttentionLayer, Choice
from attnlab.layers.deconstructed._common import (DeconRopeConfig, HeadStateCache, QKVOProjections, merge_heads,
                                                  rope_if, split_heads)
from attnlab.layers.registry import MechanismSpec, register
from attnlab.ops.linear import feature_dim, linear_attention

__all__ = ["ApproxConfig", "ApproxAttention", "PrintedTaylorCache", "printed_parallel", "printed_recurrent",
           "APPROX_IMPLS"]

ApproxForm = Literal["taylor", "printed"]
ApproxImpl = Literal["recurrent", "parallel", "chunked"]
APPROX_IMPLS: tuple[str, ...] = ("recurrent", "parallel", "chunked")
# Added to form taylor's normaliser (>= i/2 at position i, so a relative change <= 2e-12): the chunked form pads T up
# to a multiple of the chunk with zero features, whose 0/0 would otherwise put NaN into the backward pass.
_TAYLOR_EPS = 1e-12
PrintedState = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]  # sv, sk, skh, skv, skhv, count


def _guard(den: Tensor, eps: float) -> Tensor:
    """Keep the sign (0 counts as +), clamp ``|den| >= eps``."""
    sign = torch.where(den < 0, -1.0, 1.0).to(den.dtype)
    return sign * den.abs().clamp_min(eps)


def _hat(t: Tensor) -> Tensor:
    return t * t / math.sqrt(2.0)


def printed_parallel(q: Tensor, k: Tensor, v: Tensor, *, den_eps: float) -> Tensor:
    """Form P as a masked quadratic form; ``q``, ``k``, ``v`` ``(B, H, T, D)`` -> ``(B, H, T, D)``."""
    T = q.shape[-2]
    mask = torch.ones(T, T, dtype=q.dtype, device=q.device).tril()  # (T, T)
    count = torch.arange(1, T + 1, dtype=q.dtype, device=q.device)[:, None]  # (T, 1)
    o0 = (mask @ v) / count  # (B, H, T, D): causal prefix mean of v
    out = o0
    for a, b in ((q, k), (_hat(q), _hat(k))):
        w = (a @ b.transpose(-1, -2)) * mask  # (B, H, T, T): q_i . k_j for j <= i
        out = out + (w @ v) / _guard(w.sum(-1, keepdim=True), den_eps)
    return out


def printed_recurrent(q: Tensor, k: Tensor, v: Tensor, state: PrintedState, *, den_eps: float
                      ) -> tuple[Tensor, PrintedState]:
    """Form P one position at a time from ``state`` (see :class:`PrintedTaylorCache`)."""
    sv, sk, skh, skv, skhv, n = state
    outs = []
    for t in range(q.shape[-2]):
        qt, kt, vt = q[:, :, t], k[:, :, t], v[:, :, t]  # (B, H, D)
        qh, kh = _hat(qt), _hat(kt)
        sv, sk, skh = sv + vt, sk + kt, skh + kh
        skv = skv + kt[..., :, None] * vt[..., None, :]  # (B, H, D, D)
        skhv = skhv + kh[..., :, None] * vt[..., None, :]
        n = n + 1
        o = sv / n[..., None]
        o = o + (qt[..., None, :] @ skv)[..., 0, :] / _guard((qt * sk).sum(-1, keepdim=True), den_eps)
        o = o + (qh[..., None, :] @ skhv)[..., 0, :] / _guard((qh * skh).sum(-1, keepdim=True), den_eps)
        outs.append(o)
    return torch.stack(outs, dim=2), (sv, sk, skh, skv, skhv, n)


class PrintedTaylorCache(HeadStateCache):
    """Decoding state of form P: ``sum v``, ``sum k``, ``sum k^`` ``(B, H, D)``, ``sum k^T v`` and ``sum k^^T v``
    ``(B, H, D, D)`` and the count ``(B, H)`` of positions (the paper's Tbl. 8 Approximate cache, spec 3.3)."""

    @property
    def state(self) -> PrintedState:
        return self._state

    def update(self, state: PrintedState, n_tokens: int) -> None:
        self._state = state
        self._seq_len += n_tokens

    def memory_bytes(self) -> int:
        return self._nbytes(*self._state)

    def reset(self) -> None:
        B, H, D = self.batch_size, self.n_heads, self.head_dim
        z = lambda *s: torch.zeros(*s, device=self.device, dtype=self.dtype)  # noqa: E731
        self._state = (z(B, H, D), z(B, H, D), z(B, H, D), z(B, H, D, D), z(B, H, D, D), z(B, H))
        self._seq_len = 0


@dataclass(kw_only=True)
class ApproxConfig(DeconRopeConfig):
    """Configuration of :class:`ApproxAttention`.

    Attributes:
        d_model, n_heads, head_dim: head geometry.
        form: ``"taylor"`` (one normalised Taylor map, default) or ``"printed"`` (Eq. 14-17's three terms).
        impl: ``"recurrent"``, ``"parallel"`` or ``"chunked"`` (``"chunked"``: form ``"taylor"`` only).
        chunk_size: chunk length of the chunked form.
        rope: RoPE on q and k (default on in an LM).
        rope_base: RoPE base.
        den_eps: form ``"printed"``'s denominator clamp.
    """

    form: ApproxForm = "taylor"
    impl: ApproxImpl = "parallel"
    chunk_size: int = 64
    den_eps: float = 1e-6

    def check(self) -> None:
        if self.form not in ("taylor", "printed"):
            raise ValueError(f"form must be one of ('taylor', 'printed'), got {self.form!r}")
        if self.impl not in APPROX_IMPLS:
            raise ValueError(f"impl must be one of {APPROX_IMPLS}, got {self.impl!r}")
        if self.form == "printed" and self.impl == "chunked":
            raise ValueError("impl='chunked' exists for form='taylor' only; form='printed' has 'recurrent', 'parallel'")
        if isinstance(self.chunk_size, bool) or not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {self.chunk_size!r}")
        check_float("den_eps", self.den_eps, low=0.0, high=math.inf, low_inclusive=False)


class ApproxAttention(AttentionLayer):
    """Taylor-approximated causal attention; see the module docstring."""

    config_class = ApproxConfig
    repr_fields = ("d_model", "n_heads", "head_dim", "form", "rope", "impl")
    attention_probabilities: str | None = "a kernelised Taylor map; use layer.attention_map(x) for form 'taylor'"
    impl = Choice(APPROX_IMPLS, "Form of the op: 'recurrent', 'parallel' or 'chunked' (taylor only).")

    def __init__(self, config: ApproxConfig) -> None:
        super().__init__(config)
        QKVOProjections.attach(self, config.d_model, self.n_heads, self.head_dim)
        self.form = config.form
        self.rope, self.rope_base = config.rope, float(config.rope_base)
        self.chunk_size, self.den_eps = config.chunk_size, float(config.den_eps)
        self.impl = config.impl

    def new_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> AttentionCache:
        """A zero recurrent state: :class:`RecurrentStateCache` (form taylor) or :class:`PrintedTaylorCache`."""
        w = self.q_proj.weight
        device, dtype = w.device if device is None else device, w.dtype if dtype is None else dtype
        if self.form == "taylor":
            return RecurrentStateCache(batch_size, self.n_heads, feature_dim("taylor", self.head_dim), self.head_dim,
                                       device=device, dtype=dtype)
        return PrintedTaylorCache(batch_size, self.n_heads, self.head_dim, device=device, dtype=dtype)

    def _qkv(self, x: Tensor, offset: int) -> tuple[Tensor, Tensor, Tensor]:
        q = rope_if(split_heads(self.q_proj(x), self.n_heads), self.rope, offset, self.rope_base)  # (B, H, T, D)
        k = rope_if(split_heads(self.k_proj(x), self.n_heads), self.rope, offset, self.rope_base)  # (B, H, T, D)
        return q, k, split_heads(self.v_proj(x), self.n_heads)

    def attention_map(self, x: Tensor) -> Tensor:
        """Form taylor's normalised map ``A`` ``(B, H, T, T)`` (zeros above the diagonal)."""
        if self.form != "taylor":
            raise ValueError("attention_map exists for form='taylor' only (form='printed' is three separate maps)")
        q, k, _ = self._qkv(x, 0)
        s = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, T, T)
        w = (1 + s + s * s / 2) * torch.ones_like(s).tril()
        return w / w.sum(-1, keepdim=True)

    def forward(self, x: Tensor, *, context: Tensor | None = None, cache: AttentionCache | None = None) -> Tensor:
        """``(B, T, C) -> (B, T, C)``; with ``cache`` the input continues the cached sequence."""
        check_layer_input(x, d_model=self.d_model, reference_param=self.q_proj.weight)
        if context is not None:
            raise ValueError("decon_approx has no cross-attention: context must be None")
        want = RecurrentStateCache if self.form == "taylor" else PrintedTaylorCache
        if cache is not None and not isinstance(cache, want):
            raise ValueError(f"cache must be a {want.__name__} from layer.new_cache(), got {type(cache).__name__}")
        if cache is not None and cache.batch_size != x.shape[0]:
            raise ValueError(f"cache holds batch_size={cache.batch_size}, x has B={x.shape[0]}")
        offset = 0 if cache is None else cache.seq_len
        q, k, v = self._qkv(x, offset)
        if self.form == "taylor":
            out, state = linear_attention(q, k, v, feature_map="taylor", causal=True,
                                          initial_state=None if cache is None else cache.state,
                                          impl=self._impl, chunk_size=self.chunk_size, eps=_TAYLOR_EPS)  # (B, H, T, D)
            if cache is not None:
                cache.update(state, x.shape[1])
        elif self._impl == "chunked":
            raise ValueError("impl='chunked' exists for form='taylor' only")
        elif cache is not None or self._impl == "recurrent":
            st = cache.state if cache is not None else PrintedTaylorCache(
                x.shape[0], self.n_heads, self.head_dim, device=x.device, dtype=x.dtype).state
            out, st = printed_recurrent(q, k, v, st, den_eps=self.den_eps)
            if cache is not None:
                cache.update(st, x.shape[1])
        else:
            out = printed_parallel(q, k, v, den_eps=self.den_eps)
        return self.out_proj(merge_heads(out))  # (B, T, C)


register(MechanismSpec(
    name="decon_approx",
    description="Deconstructing Attention: 2nd-order Taylor map 1+s+s^2/2 (Eq. 6; form 'printed': Eq. 14-17); "
                "recurrent state",
    make_config=ApproxConfig,
    causal=True,
    cache="taylor-recurrent",  # not "recurrent": verify/linear.py's checks read a LinearAttention's op parameters
    backends=APPROX_IMPLS,
    verify_options={"chunk_size": 4},
))
