"""Configuration of the decoder-only language model :class:`~attnlab.models.lm.LM`.

The attention of every layer comes from the mechanism registry, chosen per layer by :attr:`LMConfig.attention` and
:attr:`LMConfig.schedule` (see :mod:`attnlab.models.stack`). The config validates every value once, in
``__post_init__``, and resolves each layer's config there; the model builds its layers from those resolved
configs, so a bad option fails when the config is made, not mid-training, and no name is looked up twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from attnlab._validation import check_bool, check_int
from attnlab.config import PlainConfig
from attnlab.models.common import Widths, swiglu_hidden
from attnlab.models.stack import SCHEDULES, ResolvedStack, Schedule, check_positive_ints, resolve_stack


__all__ = ["LMConfig", "swiglu_hidden", "SCHEDULES"]


@dataclass(kw_only=True)
class LMConfig(Widths, PlainConfig):
    """A LLaMA-style decoder-only LM whose attention is any registered causal mechanism, per layer.

    Attributes:
        vocab_size: number of token ids; ``None`` until a task fills it in from its tokenizer (``build`` needs it).
        n_layers: number of residual blocks.
        d_model: residual stream width.
        n_heads: heads of a *standard* layer. With ``parity`` each layer gets ``spec.heads_for_parity(n_heads)``
            heads of the same ``head_dim`` (CASTLE: 4/7 of them), so every mechanism spends the same attention
            parameters; without it every layer has ``n_heads``.
        head_dim: per-head dim; ``None`` means ``d_model // n_heads`` (which must divide). Fixed for every layer.
        context_len: the longest sequence the model accepts (training windows, cached decoding). Was
            ``block_size`` before attnlab 0.2.
        attention: a registry name for every layer, or a list of ``n_layers`` names (layer 1 first).
        schedule: with a single name, ``"uniform"`` uses it in every layer; ``"alternate"`` uses it in the odd
            layers (1, 3, 5, ... counting from 1) and ``"standard"`` in the even ones; the nine layouts of the
            deconstructing-attention ablation (``"even"``, ``"odd"``, ``"top"``, ``"middle"``, ``"bottom"``,
            ``"quarter"``, ``"first"``, ``"last"``, ``"bilateral"``) place it as :func:`attnlab.models.stack.
            standard_layers` describes. Ignored when ``attention`` is a list, which fixes every layer explicitly.
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

    #: the model class :meth:`build` makes (set by :mod:`attnlab.models.lm.model`)
    model_class: ClassVar[type[nn.Module]]

    #: Keys of older config files and what they are called now (the loader names the new key).
    RENAMED: ClassVar[dict[str, str]] = {"block_size": "context_len"}

    vocab_size: int | None = None
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    head_dim: int | None = None
    context_len: int = 64
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
        if self.vocab_size is not None:
            check_int("vocab_size", self.vocab_size, 1)
        check_positive_ints(self, "n_layers", "d_model", "n_heads", "context_len")
        self.check_widths()
        check_bool("parity", self.parity)
        check_bool("tie_embeddings", self.tie_embeddings)
        if isinstance(self.attention, tuple):
            self.attention = list(self.attention)
        self._stack: ResolvedStack = resolve_stack(
            attention=self.attention, schedule=self.schedule, n_layers=self.n_layers,
            options=self.attention_options, parity=self.parity, d_model=self.d_model, n_heads=self.n_heads,
            head_dim=self.resolved_head_dim, rope_base=self.rope_base, dropout=self.dropout, causal=True,
            owner="a decoder-only LM",
        )

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the resolved stack (its masks hold closures), e.g. for a study's worker processes;
        unpickling validates and resolves it again."""
        return {k: v for k, v in self.__dict__.items() if k != "_stack"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def __copy__(self) -> LMConfig:  # copies keep the resolved stack (only pickling drops it)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> LMConfig:
        import copy

        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update({k: copy.deepcopy(v, memo) for k, v in self.__dict__.items()})
        return new

    # ---------------------------------------------------------------------------------------------- derived
    @property
    def stack(self) -> ResolvedStack:
        """The mechanism of every layer and each mechanism's validated layer config (resolved once)."""
        return self._stack

    def layer_mechanisms(self) -> list[str]:
        """The mechanism name of each layer, layer 1 first."""
        return list(self._stack.mechanisms)

    def layer_config(self, name: str) -> Any:
        """The validated layer config of mechanism ``name`` in this model (built once, in ``__post_init__``)."""
        if name not in self._stack.configs:
            raise ValueError(f"no layer of this model uses {name!r}; it uses {', '.join(self._stack.configs)}")
        return self._stack.configs[name]

    # ------------------------------------------------------------------------------------------- plumbing
    def build(self) -> nn.Module:
        """The model (:class:`~attnlab.models.lm.model.LM`, which registers itself here as
        ``model_class`` when :mod:`attnlab.models.lm` is imported, so this module never imports the model's)."""
        return type(self).model_class(self)
