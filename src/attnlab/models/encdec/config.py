"""Configuration of the encoder-decoder model :class:`~attnlab.models.encdec.EncoderDecoder`.

Both stacks take their self-attention from the mechanism registry, chosen per layer (see
:mod:`attnlab.models.stack`): the encoder's may be any mechanism, the decoder's must be causal. The config validates
every value once, in ``__post_init__``, and resolves each layer's config there (the decoder's cross-attention
config included); the model builds its layers from those resolved configs.

Source padding and the encoder
    Sources are right-padded. A **causal** encoder mechanism (sliding-window, linear, CASTLE, ...) never lets a
    real position see a later one, so padding is invisible to real positions without any mask. A **non-causal**
    one must hide the padded keys: the model passes it a key-padding mask (AND-ed with the layer's own mask) through
    the layer's per-call ``mask=``, which :class:`~attnlab.layers.mha.MultiHeadAttention` takes (bidirectional,
    prefix-lm, the non-causal options of the sparse masks). A non-causal layer of another kind (e.g. linear
    attention with ``causal=False``) cannot take that mask, and the config refuses it, naming the mechanism.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from attnlab._validation import check_bool, check_int
from attnlab.config import PlainConfig
from attnlab.layers import registry
from attnlab.layers.mha import MultiHeadAttentionConfig
from attnlab.models.common import Widths
from attnlab.models.stack import ResolvedStack, Schedule, check_positive_ints, resolve_stack


__all__ = ["EncDecConfig", "CrossScore", "CROSS_SCORES"]

CrossScore = Literal["scaled_dot", "dot", "general", "additive"]
CROSS_SCORES: tuple[str, ...] = ("scaled_dot", "dot", "general", "additive")


@dataclass(kw_only=True)
class EncDecConfig(Widths, PlainConfig):
    """A pre-norm Transformer encoder-decoder (RMSNorm, SwiGLU, RoPE in self-attention) for translation.

    Attributes:
        vocab_size: size of the joint source/target vocabulary; ``None`` until a task fills it in from its
            tokenizer (``build`` needs it).
        pad_id: the padding id: source positions holding it are hidden from attention (``src == pad_id``).
        d_model: residual stream width of both stacks.
        n_heads: heads of a *standard* layer; with ``parity`` each self-attention layer gets
            ``spec.heads_for_parity(n_heads)`` heads of the same ``head_dim`` (see :class:`~attnlab.models.LMConfig`).
            Cross-attention always has ``n_heads``.
        head_dim: per-head dim; ``None`` means ``d_model // n_heads`` (which must divide).
        n_encoder_layers, n_decoder_layers: residual blocks in each stack.
        encoder_attention: the encoder's self-attention, a registry name for every layer or a list of names
            (layer 1 first); any mechanism, see the module docstring for padding.
        encoder_schedule: ``"uniform"`` or ``"alternate"`` (odd layers the named mechanism, even ones ``"standard"``).
        encoder_attention_options: per mechanism name, options of its layer config (e.g. ``{"sliding-window":
            {"window": 8}}``).
        decoder_attention, decoder_schedule, decoder_attention_options: the same for the decoder's self-attention,
            whose mechanisms must be causal.
        cross_score: the cross-attention score, :class:`~attnlab.layers.mha.MultiHeadAttention`'s ``score``:
            ``"scaled_dot"`` (Vaswani), ``"dot"`` (Luong dot), ``"general"`` (Luong general), ``"additive"``
            (Bahdanau).
        parity: give every self-attention mechanism the parameter count of ``"standard"`` (see ``n_heads``).
        ffn_hidden: SwiGLU hidden size; ``None`` means ``swiglu_hidden(d_model)``.
        dropout: on the embeddings, on each residual branch and (where the layer has it) on attention weights.
        rope_base: RoPE base of the self-attention layers (cross-attention uses no positions).
        norm_eps: RMSNorm epsilon.
        max_source_len: the longest source (in tokens, padding included) the encoder accepts.
        max_target_len: the longest decoder input (``[bos] y``, padding included) the decoder accepts.
        tie_embeddings: share the output projection with the token embedding. The input embedding is always one
            table for encoder and decoder (the vocabulary is joint), so ``True`` means one matrix for all three.
    """

    #: the model class :meth:`build` makes (set by :mod:`attnlab.models.encdec.model`)
    model_class: ClassVar[type[nn.Module]]

    vocab_size: int | None = None
    pad_id: int = 0
    d_model: int = 128
    n_heads: int = 4
    head_dim: int | None = None
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    encoder_attention: str | list[str] = "bidirectional"
    encoder_schedule: Schedule = "uniform"
    encoder_attention_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    decoder_attention: str | list[str] = "standard"
    decoder_schedule: Schedule = "uniform"
    decoder_attention_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    cross_score: CrossScore = "scaled_dot"
    parity: bool = True
    ffn_hidden: int | None = None
    dropout: float = 0.0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    max_source_len: int = 128
    max_target_len: int = 128
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.vocab_size is not None:
            check_int("vocab_size", self.vocab_size, 2)
        check_int("pad_id", self.pad_id, 0)
        if self.vocab_size is not None and self.pad_id >= self.vocab_size:
            raise ValueError(f"pad_id={self.pad_id} must be < vocab_size={self.vocab_size}")
        check_positive_ints(self, "d_model", "n_heads", "n_encoder_layers", "n_decoder_layers", "max_source_len",
                            "max_target_len")
        self.check_widths()
        if self.cross_score not in CROSS_SCORES:
            raise ValueError(f"cross_score must be one of {CROSS_SCORES}, got {self.cross_score!r}")
        check_bool("parity", self.parity)
        check_bool("tie_embeddings", self.tie_embeddings)
        for name in ("encoder_attention", "decoder_attention"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        common = dict(parity=self.parity, d_model=self.d_model, n_heads=self.n_heads, head_dim=self.resolved_head_dim,
                      rope_base=self.rope_base, dropout=self.dropout)
        self._encoder: ResolvedStack = _named(
            "encoder_attention", lambda: resolve_stack(
                attention=self.encoder_attention, schedule=self.encoder_schedule, n_layers=self.n_encoder_layers,
                options=self.encoder_attention_options, causal=False, options_name="encoder_attention_options",
                owner="the encoder", **common))
        self._decoder: ResolvedStack = _named(
            "decoder_attention", lambda: resolve_stack(
                attention=self.decoder_attention, schedule=self.decoder_schedule, n_layers=self.n_decoder_layers,
                options=self.decoder_attention_options, causal=True, options_name="decoder_attention_options",
                owner="the decoder", **common))
        for name, cfg in self._encoder.configs.items():
            if not layer_is_causal(name, cfg) and not isinstance(cfg, MultiHeadAttentionConfig):
                raise ValueError(
                    f"encoder_attention: mechanism {name!r} is not causal and its layer takes no per-call mask, so "
                    "padded source positions would be visible to real ones; use a causal mechanism or one built on "
                    "MultiHeadAttention (e.g. 'bidirectional')"
                )
        self._cross = MultiHeadAttentionConfig(
            d_model=self.d_model, n_heads=self.n_heads, head_dim=self.resolved_head_dim, score=self.cross_score,
            mask=None, rope=False, cross=True, dropout=self.dropout,
        )

    # ---------------------------------------------------------------------------------------------- derived
    @property
    def encoder_stack(self) -> ResolvedStack:
        """The encoder's mechanism per layer and each mechanism's validated layer config (resolved once)."""
        return self._encoder

    @property
    def decoder_stack(self) -> ResolvedStack:
        """The decoder's mechanism per layer and each mechanism's validated layer config (resolved once)."""
        return self._decoder

    @property
    def cross_config(self) -> MultiHeadAttentionConfig:
        """The config of every decoder cross-attention layer (``cross=True``, no mask, no RoPE, ``cross_score``)."""
        return self._cross

    # ------------------------------------------------------------------------------------------- plumbing
    def build(self) -> nn.Module:
        """The model (:class:`~attnlab.models.encdec.model.EncoderDecoder`, which registers itself here as
        ``model_class`` when :mod:`attnlab.models.encdec` is imported, so this module never imports the model's)."""
        return type(self).model_class(self)


def layer_is_causal(mechanism: str, cfg: Any) -> bool:
    """Whether the layer of a resolved config is causal: the config's ``causal`` field or property where it has one
    (options may change it, e.g. linear attention's ``causal=False``), else the registry's word for ``mechanism``."""
    causal = getattr(cfg, "causal", None)
    return bool(registry.get(mechanism).causal if causal is None else causal)


def _named(field_name: str, resolve: Any) -> ResolvedStack:
    """``resolve()``, with ``resolve_stack``'s leading ``attention`` (its own name for the field) renamed."""
    try:
        return resolve()
    except ValueError as e:
        msg = str(e)
        if msg.startswith("attention"):
            msg = field_name + msg[len("attention"):]
        elif msg.startswith("schedule"):
            msg = field_name.replace("attention", "schedule") + msg[len("schedule"):]
        raise ValueError(msg) from None
