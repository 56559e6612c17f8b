"""Configuration of the decoder-only language model :class:`~attnlab.models.lm.LM`.

The attention of every layer comes from the mechanism registry (:mod:`attnlab.layers.registry`), chosen per
layer by :attr:`LMConfig.attention` and :attr:`LMConfig.schedule`. The config builds (and so validates) each
layer's own config in ``__post_init__``, so a bad option fails when the config is made, not mid-training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from attnlab.layers import registry

if TYPE_CHECKING:
    from attnlab.models.lm import LM

__all__ = ["LMConfig", "swiglu_hidden", "SCHEDULES"]

Schedule = Literal["uniform", "alternate"]
SCHEDULES: tuple[str, ...] = ("uniform", "alternate")

# Options the LM sets itself for every layer; they may not appear in ``attention_options``.
_LM_OWNED = ("d_model", "n_heads", "head_dim")


def swiglu_hidden(d_model: int, multiple_of: int = 64) -> int:
    """Default SwiGLU hidden size: ``8/3 * d_model`` rounded **up** to a multiple of ``multiple_of``.

    ``8/3 d`` keeps the parameter count of a ``4 d`` GELU MLP (SwiGLU has three matrices instead of two), as in
    LLaMA. Examples: ``d_model=128 -> 384``, ``384 -> 1024``, ``768 -> 2048``.
    """
    raw = (8 * d_model) // 3
    return multiple_of * -(-raw // multiple_of)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(kw_only=True)
class LMConfig:
    """A LLaMA-style decoder-only LM whose attention is any registered causal mechanism, per layer.

    Attributes:
        vocab_size: number of token ids.
        n_layers: number of residual blocks.
        d_model: residual stream width.
        n_heads: heads of a *standard* layer. With ``parity`` each layer gets ``spec.heads_for_parity(n_heads)``
            heads of the same ``head_dim`` (CASTLE: 4/7 of them), so every mechanism spends the same attention
            parameters; without it every layer has ``n_heads``.
        head_dim: per-head dim; ``None`` means ``d_model // n_heads`` (which must divide). Fixed for every layer.
        block_size: the longest sequence (context) the model accepts; also bounds cached decoding.
        attention: a registry name for every layer, or a list of ``n_layers`` names (layer 1 first).
        schedule: with a single name, ``"uniform"`` uses it in every layer; ``"alternate"`` uses it in the odd
            layers (1, 3, 5, ... counting from 1) and ``"standard"`` in the even ones. Ignored when ``attention`` is
            a list, which fixes every layer explicitly.
        attention_options: per mechanism name, options for that mechanism's layer config (e.g.
            ``{"sliding-window": {"window": 64}}``, ``{"standard": {"impl": "sdpa"}}``); every name must be used by
            some layer. ``d_model``, ``n_heads`` and ``head_dim`` are set by the LM and may not appear.
        parity: match the attention parameter count of ``"standard"`` (see ``n_heads``).
        ffn_hidden: SwiGLU hidden size; ``None`` means :func:`swiglu_hidden` (``8/3 d_model`` rounded up to a
            multiple of 64).
        dropout: on the embeddings, on each residual branch and (where the layer has it) on attention weights.
        rope_base: RoPE base for layers that use RoPE (every layer whose config has ``rope`` gets ``rope=True``).
        norm_eps: RMSNorm epsilon.
        tie_embeddings: share the token embedding with the output projection (counted once).
    """

    vocab_size: int
    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int | None = None
    block_size: int
    attention: str | list[str] = "standard"
    schedule: Schedule = "uniform"
    attention_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    parity: bool = True
    ffn_hidden: int | None = None
    dropout: float = 0.0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layers", "d_model", "n_heads", "block_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"n_heads={self.n_heads} must divide d_model={self.d_model} (or pass head_dim explicitly)"
                )
        elif not _is_int(self.head_dim) or self.head_dim < 1:
            raise ValueError(f"head_dim must be an int >= 1 or None, got {self.head_dim!r}")
        if self.ffn_hidden is not None and (not _is_int(self.ffn_hidden) or self.ffn_hidden < 1):
            raise ValueError(f"ffn_hidden must be an int >= 1 or None, got {self.ffn_hidden!r}")
        if not _is_number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be a float in [0, 1), got {self.dropout!r}")
        if not _is_number(self.rope_base) or not self.rope_base > 1:
            raise ValueError(f"rope_base must be a number > 1, got {self.rope_base!r}")
        if not _is_number(self.norm_eps) or not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be a number > 0, got {self.norm_eps!r}")
        for name in ("parity", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if isinstance(self.attention, tuple):
            self.attention = list(self.attention)
        if isinstance(self.attention, list):
            if len(self.attention) != self.n_layers:
                raise ValueError(
                    f"attention is a list of {len(self.attention)} mechanism names but n_layers={self.n_layers}; "
                    "give one name per layer (or a single name and a schedule)"
                )
        elif not isinstance(self.attention, str):
            raise ValueError(f"attention must be a mechanism name or a list of them, got {self.attention!r}")
        valid = registry.names()
        mechanisms = self.layer_mechanisms()
        for i, name in enumerate(mechanisms):
            if not isinstance(name, str) or name not in valid:
                raise ValueError(
                    f"attention: layer {i + 1} has unknown mechanism {name!r}; registered: {', '.join(valid)}"
                )
            spec = registry.get(name)
            if not spec.causal:
                causal = [n for n in valid if registry.get(n).causal]
                raise ValueError(
                    f"attention: mechanism {name!r} (layer {i + 1}) is not causal, so a decoder-only LM would see the "
                    f"tokens it predicts; causal mechanisms: {', '.join(causal)}"
                )
        if not isinstance(self.attention_options, dict):
            raise ValueError(f"attention_options must be a dict of dicts, got {self.attention_options!r}")
        for name, opts in self.attention_options.items():
            if name not in mechanisms:
                raise ValueError(
                    f"attention_options has options for {name!r}, which no layer uses; this model uses "
                    f"{', '.join(dict.fromkeys(mechanisms))}"
                )
            if not isinstance(opts, dict):
                raise ValueError(f"attention_options[{name!r}] must be a dict of options, got {opts!r}")
            owned = sorted(set(opts) & set(_LM_OWNED))
            if owned:
                raise ValueError(
                    f"attention_options[{name!r}] sets {', '.join(owned)}, which the LM sets for every layer; "
                    "set them on LMConfig instead"
                )
        for name in dict.fromkeys(mechanisms):
            self.layer_config(name)  # builds and so validates the layer config

    # ---------------------------------------------------------------------------------------------- derived
    @property
    def resolved_head_dim(self) -> int:
        """``head_dim``, or ``d_model // n_heads`` when it is ``None``."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def resolved_ffn_hidden(self) -> int:
        """``ffn_hidden``, or :func:`swiglu_hidden` of ``d_model``."""
        return self.ffn_hidden if self.ffn_hidden is not None else swiglu_hidden(self.d_model)

    def layer_mechanisms(self) -> list[str]:
        """The mechanism name of each layer, layer 1 first."""
        if isinstance(self.attention, list):
            return list(self.attention)
        if self.schedule == "alternate":
            # 1-indexed: odd layers (index 0, 2, ...) get the variant, even layers get "standard"
            return [self.attention if i % 2 == 0 else "standard" for i in range(self.n_layers)]
        return [self.attention] * self.n_layers

    def layer_heads(self, name: str) -> int:
        """Heads of a layer with mechanism ``name`` (``heads_for_parity(n_heads)`` under ``parity``)."""
        if not self.parity:
            return self.n_heads
        heads = registry.get(name).heads_for_parity(self.n_heads)
        if not _is_int(heads) or heads < 1:
            raise ValueError(
                f"parity: mechanism {name!r} gives {heads!r} heads for n_heads={self.n_heads}; choose a larger "
                "n_heads or parity=False"
            )
        return heads

    def layer_config(self, name: str) -> Any:
        """The validated layer config of mechanism ``name`` in this model.

        The LM passes ``d_model``, the parity head count and ``head_dim``; then, where the mechanism's config has
        the field, ``rope=True``, ``rope_base`` and ``dropout``; then ``attention_options[name]``, which win.
        """
        spec = registry.get(name)
        heads = self.layer_heads(name)
        user = dict(self.attention_options.get(name, {}))
        base = dict(d_model=self.d_model, n_heads=heads, head_dim=self.resolved_head_dim)
        try:
            probe = spec.config(**base, **user)
            fields = {f.name for f in dataclasses.fields(probe)} if dataclasses.is_dataclass(probe) else set()
            extra: dict[str, Any] = {}
            if "rope" in fields and "rope" not in user:
                extra["rope"] = True
            if "rope_base" in fields and "rope_base" not in user:
                extra["rope_base"] = float(self.rope_base)
            if "dropout" in fields and "dropout" not in user:
                extra["dropout"] = float(self.dropout)
            cfg = spec.config(**base, **extra, **user) if extra else probe
        except (TypeError, ValueError) as e:
            raise ValueError(f"attention {name!r}: invalid layer options ({e})") from None
        uses_rope = bool(getattr(cfg, "rope", False))
        if uses_rope and "rope_base" not in fields and self.rope_base != 10000.0:
            raise ValueError(
                f"rope_base={self.rope_base} cannot be passed to mechanism {name!r}, whose config has no rope_base "
                "field (it uses 10000); use rope_base=10000.0"
            )
        if getattr(cfg, "causal", True) is False:
            raise ValueError(
                f"attention {name!r}: the options {user!r} make the layer non-causal, which a decoder-only LM cannot use"
            )
        return cfg

    # ------------------------------------------------------------------------------------------- plumbing
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; ``LMConfig.from_dict(c.to_dict()) == c``."""
        d = dataclasses.asdict(self)
        if isinstance(d["attention"], list):
            d["attention"] = list(d["attention"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"LMConfig.from_dict: unknown field(s) {unknown}; valid fields: {sorted(known)}")
        return cls(**d)

    def build(self) -> LM:
        from attnlab.models.lm import LM

        return LM(self)
