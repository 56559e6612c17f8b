"""What the deconstructed-attention variants share: the typed per-call inputs a model passes them, a causal
softmax with an absolute query offset, a state-free decoding cache and the q/k/v/out projections.

Shape legend: B batch (``Bq``/``Bk`` where a side may be 1: a map shared by the batch), H heads, T new query
positions, S key positions (``offset + T``), D head dim, C ``d_model``, L length of the fixed stream.

Paper: Xue, Moosavi and Aletras, "Deconstructing Attention" (arXiv:2510.11602v1, 2025); the formulas follow the
project's specification ``shared/specs/deconstructing.md`` section 3, cited there by the paper's section numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from attnlab._validation import check_head_geometry, resolve_device_dtype
from attnlab.cache.base import AttentionCache
from attnlab.layers._common import HeadGeometry
from attnlab.layers.rope import apply_rope

__all__ = ["DeconConfig", "DeconRopeConfig", "MixerInputs", "causal_softmax_probs", "StatelessCache", "HeadStateCache", "QKVOProjections", "split_heads",
           "merge_heads", "check_inputs"]


@dataclass(kw_only=True)
class DeconConfig(HeadGeometry):
    """Base of the variants' configs: the head geometry (``head_dim=None``: ``d_model // n_heads``), checked
    after construction together with the subclass's own fields (:meth:`check`)."""

    layer_class: ClassVar[type[nn.Module]]
    d_model: int
    n_heads: int
    head_dim: int | None = None

    def __post_init__(self) -> None:
        check_head_geometry(self.d_model, self.n_heads, self.head_dim)
        self.check()

    def check(self) -> None:
        """Raise ``ValueError`` naming the field for a bad value of the subclass's own fields (default: none)."""

    def build(self) -> nn.Module:
        """The layer of this config (its ``layer_class``, set by :class:`attnlab.layers._common.AttentionLayer`)."""
        return self.layer_class(self)


@dataclass(kw_only=True)
class DeconRopeConfig(DeconConfig):
    """:class:`DeconConfig` plus ``rope`` (RoPE on the layer's q and k; on by default in an LM) and ``rope_base``."""

    rope: bool = False
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_rope(base=True)


@dataclass(frozen=True, kw_only=True)
class MixerInputs:
    """What a deconstructed variant needs beyond its layer input ``x``, passed per call by its model as
    ``layer(x, inputs=MixerInputs(...))`` (never through global state).

    Attributes:
        token_emb: ``(B, T, C)`` the static token embeddings ``e = Emb(t)`` of this call's tokens (before any block
            and before dropout), for ``decon_staticembqk`` (spec 3.7).
        fixed_hidden: ``(L, C)`` the fixed stream's residual state ``x^(l)`` entering this layer's block, positions
            ``0 .. L-1`` (``L >= offset + T``), for ``decon_rndembqk`` and ``decon_fixedseqqk`` (spec 3.5-3.6). The
            layer uses the rows of its query positions and every earlier row.
        norm: the block's own pre-norm ``Norm_l``, which the layer applies to ``token_emb`` / ``fixed_hidden``
            (``None``: identity).
    """

    token_emb: Tensor | None = None
    fixed_hidden: Tensor | None = None
    norm: Callable[[Tensor], Tensor] | None = None

    def normed(self, t: Tensor) -> Tensor:
        """``norm(t)`` (or ``t`` when there is no norm)."""
        return t if self.norm is None else self.norm(t)


def check_inputs(inputs: object, layer: str) -> MixerInputs | None:
    """``inputs`` must be ``None`` or a :class:`MixerInputs`."""
    if inputs is not None and not isinstance(inputs, MixerInputs):
        raise ValueError(f"{layer}: inputs must be a MixerInputs or None, got {type(inputs).__name__}")
    return inputs


def causal_softmax_probs(q: Tensor, k: Tensor, *, q_offset: int) -> Tensor:
    """Causal ``softmax(q k^T / sqrt(D))`` with query ``i`` at absolute position ``q_offset + i`` and key ``j`` at
    position ``j``: query ``i`` sees keys ``j <= q_offset + i`` (spec section 2). ``q`` ``(Bq, H, T, D)``, ``k``
    ``(Bk, H, S, D)``; returns ``(max(Bq, Bk), H, T, S)``, rows summing to 1, exact zeros above the diagonal."""
    T, S, D = q.shape[-2], k.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)  # (B, H, T, S)
    qpos = torch.arange(q_offset, q_offset + T, device=q.device)[:, None]  # (T, 1)
    visible = torch.arange(S, device=q.device)[None, :] <= qpos  # (T, S)
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.softmax(scores, dim=-1).masked_fill(~visible, 0.0)  # (B, H, T, S)


class StatelessCache(AttentionCache):
    """The decoding "cache" of a layer without cross-position state (``decon_mlp``): it only counts positions, so a
    model whose every layer decodes can still use one cache per layer (spec 3.8: decode state "none")."""

    def __init__(self) -> None:
        self._seq_len = 0

    @property
    def seq_len(self) -> int:
        return self._seq_len

    def advance(self, n_tokens: int) -> None:
        self._seq_len += n_tokens

    def memory_bytes(self) -> int:
        return 0

    def reset(self) -> None:
        self._seq_len = 0

    def __repr__(self) -> str:
        return f"StatelessCache(seq_len={self._seq_len})"


class HeadStateCache(AttentionCache):
    """Base of the variants' decoding states kept per head: it holds ``batch_size``, ``n_heads``, ``head_dim``,
    the device and dtype, counts positions, and calls the subclass's ``reset`` to create the empty state."""

    _seq_len: int

    def __init__(self, batch_size: int, n_heads: int, head_dim: int, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.batch_size, self.n_heads, self.head_dim = batch_size, n_heads, head_dim
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self.reset()

    @property
    def seq_len(self) -> int:
        return self._seq_len


def split_heads(t: Tensor, n_heads: int) -> Tensor:
    """``(B, T, H D) -> (B, H, T, D)``."""
    B, T, HD = t.shape
    return t.view(B, T, n_heads, HD // n_heads).transpose(1, 2)


def merge_heads(t: Tensor) -> Tensor:
    """``(B, H, T, D) -> (B, T, H D)``."""
    B, H, T, D = t.shape
    return t.transpose(1, 2).reshape(B, T, H * D)


class QKVOProjections(nn.Module):
    """``q_proj``, ``k_proj``, ``v_proj`` (``C -> H D``) and ``out_proj`` (``H D -> C``), no biases: with
    ``H D = C`` exactly Standard's ``4 C^2`` parameters (spec 2, 3.1). Kept as attributes of the layer itself by
    :meth:`attach`, so parameter names match Standard's (``q_proj.weight`` ...)."""

    @staticmethod
    def attach(layer: nn.Module, d_model: int, n_heads: int, head_dim: int) -> None:
        inner = n_heads * head_dim
        layer.q_proj = nn.Linear(d_model, inner, bias=False)
        layer.k_proj = nn.Linear(d_model, inner, bias=False)
        layer.v_proj = nn.Linear(d_model, inner, bias=False)
        layer.out_proj = nn.Linear(inner, d_model, bias=False)


def rope_if(t: Tensor, on: bool, offset: int, base: float) -> Tensor:
    """RoPE at absolute positions from ``offset`` when ``on``; ``t`` unchanged otherwise."""
    return apply_rope(t, offset, base) if on else t
