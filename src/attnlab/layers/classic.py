"""Registry entries for the classic softmax mechanisms, all served by :class:`~attnlab.layers.mha.MultiHeadAttention`.

==================  ==============================================================================================
name                config
==================  ==============================================================================================
standard            causal scaled dot-product multi-head attention (Vaswani et al. 2017)
bidirectional       the same without a mask (encoder self-attention); option ``cross=True`` makes it a dedicated
                    encoder-decoder cross-attention layer (``forward`` then requires ``context``; no RoPE)
gqa                 grouped-query attention: ``n_kv_heads`` defaults to the largest divisor of ``n_heads`` that is
                    ``<= n_heads // 2`` (``n_heads // 2`` for even head counts), at least 1
mqa                 multi-query attention: one key/value head
luong-dot           Luong dot score ``q.k`` (no ``1/sqrt(D)``), causal
luong-general       Luong general score ``q W k^T``, causal
bahdanau            Bahdanau additive score ``v . tanh(q W_q + k W_k)``, causal (option ``additive_dim``)
sliding-window      causal local attention, ``window`` counts the query itself; decodes with a bounded cache
strided             Sparse Transformer strided pattern (``stride``)
fixed               Sparse Transformer fixed pattern (``block``, ``summary``)
bigbird             window + global + random keys (``window``, ``n_global``, ``n_random``, ``seed``, ``max_len``)
prefix-lm           bidirectional over the first ``prefix_len`` positions, causal after
==================  ==============================================================================================

Every entry accepts the common options ``head_dim``, ``rope``, ``rope_base``, ``dropout``, ``bias``, ``impl`` (and
``n_kv_heads`` where the mechanism does not fix it) plus its own; an unknown option raises ``TypeError`` naming it
and listing the valid ones.

**prefix_len in a language model.** Positions ``< prefix_len`` see each other in both directions, so a query
inside the prefix sees the very tokens it would have to predict: a prefix-LM is trained with the next-token loss
on targets **after** the prefix only (positions ``>= prefix_len``), the prefix being the conditioning input
(a prompt, a source sentence). In generation the prompt is the prefix and must be **prefilled in one call**
(``T >= prefix_len``); tokens after it decode one at a time, since the mask is causal there. That rule is why the
spec advertises no ``cache``: the generic contract (any prefill length, even 0) does not hold, although the
layer's ``new_cache`` works under the rule (enforced with a ``ValueError``).

**Backends.** ``reference`` and ``sdpa`` run everywhere for every score but the additive one (reference only).
``flex`` is listed only when CUDA is available: torch 2.13's FlexAttention has no CPU backward, so on a CPU-only
machine it could not pass gradient checks (its CPU forward does work and is tested in tests/layers).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from attnlab import masks
from attnlab.layers.mha import MultiHeadAttentionConfig
from attnlab.layers.registry import MechanismSpec, register
from attnlab.masks import Mask

__all__ = ["gqa_kv_heads", "CLASSIC_BACKENDS"]

_COMMON = ("head_dim", "rope", "rope_base", "dropout", "bias", "impl")

#: Backends that run forward and backward on this machine for the dot-product family of scores.
CLASSIC_BACKENDS: tuple[str, ...] = ("reference", "sdpa", "flex") if torch.cuda.is_available() else ("reference", "sdpa")


def gqa_kv_heads(n_heads: int) -> int:
    """Default key/value heads for "gqa": the largest divisor of ``n_heads`` that is ``<= n_heads // 2`` (>= 1)."""
    if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads must be an int >= 1, got {n_heads!r}")
    return max([d for d in range(1, n_heads // 2 + 1) if n_heads % d == 0], default=1)


class _ConfigMaker:
    """``make_config(d_model=..., n_heads=..., **options)`` for one mechanism, rejecting unknown options."""

    def __init__(
        self,
        name: str,
        *,
        mask: Callable[..., Mask | None],
        mask_options: dict[str, Any],
        fixed: dict[str, Any],
        extra: tuple[str, ...] = (),
        n_kv_heads: Callable[[int], int] | None = None,
    ) -> None:
        self.name = name
        self.mask = mask
        self.mask_options = dict(mask_options)
        self.fixed = dict(fixed)
        self.n_kv_heads = n_kv_heads
        allowed = list(_COMMON) + list(extra) + list(mask_options)
        if "n_kv_heads" not in fixed:
            allowed.insert(0, "n_kv_heads")
        self.allowed = tuple(allowed)

    def __call__(self, *, d_model: int, n_heads: int, **options: Any) -> MultiHeadAttentionConfig:
        unknown = sorted(set(options) - set(self.allowed))
        if unknown:
            raise TypeError(
                f"{self.name}: unknown option(s) {', '.join(map(repr, unknown))}; valid options: {', '.join(self.allowed)}"
            )
        mask_kw = {k: options.pop(k, v) for k, v in self.mask_options.items()}
        kw: dict[str, Any] = dict(self.fixed)
        if self.n_kv_heads is not None and options.get("n_kv_heads") is None:
            options["n_kv_heads"] = self.n_kv_heads(n_heads)
        kw.update(options)
        return MultiHeadAttentionConfig(d_model=d_model, n_heads=n_heads, mask=self.mask(**mask_kw), **kw)


def _register(name: str, description: str, *, causal: bool, cross: bool, cache: str | None,
              backends: tuple[str, ...] = CLASSIC_BACKENDS, mask: Callable[..., Mask | None] = masks.causal,
              mask_options: dict[str, Any] | None = None, verify: dict[str, Any] | None = None,
              fixed: dict[str, Any] | None = None, extra: tuple[str, ...] = (),
              n_kv_heads: Callable[[int], int] | None = None) -> None:
    mask_options = mask_options or {}
    register(MechanismSpec(
        name=name,
        description=description,
        make_config=_ConfigMaker(name, mask=mask, mask_options=mask_options, fixed=fixed or {}, extra=extra,
                                 n_kv_heads=n_kv_heads),
        causal=causal,
        cross=cross,
        cache=cache,
        backends=backends,
        defaults=dict(mask_options),
        verify_options=verify or {},
    ))


def _no_mask() -> None:
    return None


_register("standard", "causal scaled dot-product multi-head attention (Vaswani et al. 2017)",
          causal=True, cross=True, cache="kv")
_register("bidirectional", "unmasked scaled dot-product multi-head attention (encoder self-attention; "
          "cross=True: encoder-decoder cross-attention)",
          causal=False, cross=True, cache=None, mask=_no_mask, extra=("cross",))
_register("gqa", "grouped-query attention: n_kv_heads (default about n_heads // 2) shared key/value heads",
          causal=True, cross=True, cache="kv", n_kv_heads=gqa_kv_heads)
_register("mqa", "multi-query attention: one key/value head shared by every query head",
          causal=True, cross=True, cache="kv", fixed={"n_kv_heads": 1})
_register("luong-dot", "Luong dot score q.k without 1/sqrt(D) scaling, causal",
          causal=True, cross=True, cache="kv", fixed={"score": "dot"})
_register("luong-general", "Luong general score q W k^T with a learned W per head, causal",
          causal=True, cross=True, cache="kv", fixed={"score": "general"})
_register("bahdanau", "Bahdanau additive score v . tanh(q W_q + k W_k), causal",
          causal=True, cross=True, cache="kv", backends=("reference",), fixed={"score": "additive"},
          extra=("additive_dim",))
_register("sliding-window", "causal local attention over the last `window` positions (the query included)",
          causal=True, cross=False, cache="sliding-kv", mask=masks.sliding_window,
          mask_options={"window": 64}, verify={"window": 4})
_register("strided", "Sparse Transformer strided pattern: the last `stride` positions and every stride-th before",
          causal=True, cross=False, cache="kv", mask=masks.strided,
          mask_options={"stride": 16}, verify={"stride": 3})
_register("fixed", "Sparse Transformer fixed pattern: own block plus the last `summary` positions of each block",
          causal=True, cross=False, cache="kv", mask=masks.fixed,
          mask_options={"block": 16, "summary": 2}, verify={"block": 4, "summary": 1})
_register("bigbird", "BigBird: sliding window + global tokens + random keys, causal",
          causal=True, cross=False, cache="kv", mask=masks.bigbird,
          mask_options={"window": 32, "n_global": 2, "n_random": 4, "seed": 0, "max_len": 16384},
          verify={"window": 3, "n_global": 1, "n_random": 2})
_register("prefix-lm", "prefix-LM: bidirectional over the first prefix_len positions, causal after",
          causal=False, cross=False, cache=None, mask=masks.prefix_lm,
          mask_options={"prefix_len": 16}, verify={"prefix_len": 5})
