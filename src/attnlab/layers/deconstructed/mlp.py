"""``decon_mlp``: the MLP variant of "Deconstructing Attention", which relaxes Token Mixing (paper section 3.2,
Eq. 4-5; spec 3.2).

Shape legend: B batch, T positions, C ``d_model``, F the gated width.

    O = W_O( FC_Dn( SiLU(FC_Gt(H)) * FC_Up(H) ) )        per position; no Q, K or V, no mixing

Width (spec 3.2, not stated in the paper): ``width="d"`` (default, reading (a)) makes FC_Gt, FC_Up, FC_Dn all
``C x C`` followed by the usual ``W_O``: exactly Standard's ``4 C^2`` for every ``C``, and prefill ``6 B L d^2``
as in the paper's Tbl. 6. ``width="4/3"`` (reading (b)) uses ``F = 4C/3`` and no ``W_O``: ``4 C^2`` only when
3 divides ``C``, which the config therefore requires. Output ``i`` depends on input ``i`` only, so decoding needs
no state (:class:`StatelessCache` just counts positions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab._validation import check_layer_input
from attnlab.layers._common import AttentionLayer
from attnlab.layers.deconstructed._common import DeconConfig, StatelessCache
from attnlab.layers.registry import MechanismSpec, register

__all__ = ["DeconMLPConfig", "DeconMLP"]

MLPWidth = Literal["d", "4/3"]


@dataclass(kw_only=True)
class DeconMLPConfig(DeconConfig):
    """Configuration of :class:`DeconMLP`.

    Attributes:
        d_model: model width ``C``.
        n_heads, head_dim: accepted for the registry's uniform interface; the layer has no heads.
        width: ``"d"`` (three ``C x C`` layers and ``W_O``) or ``"4/3"`` (``F = 4C/3``, no ``W_O``; 3 must divide
            ``C``). Both have exactly ``4 C^2`` parameters.
    """

    width: MLPWidth = "d"

    def check(self) -> None:
        if self.width not in ("d", "4/3"):
            raise ValueError(f"width must be one of ('d', '4/3'), got {self.width!r}")
        if self.width == "4/3" and self.d_model % 3:
            raise ValueError(f"width='4/3' needs d_model divisible by 3 for parameter parity (4 d_model^2), got "
                             f"d_model={self.d_model}; use width='d'")

    @property
    def hidden(self) -> int:
        """``F``: ``C`` for ``width="d"``, ``4C/3`` for ``"4/3"``."""
        return self.d_model if self.width == "d" else 4 * self.d_model // 3


class DeconMLP(AttentionLayer):
    """Position-wise gated MLP in the attention slot; see the module docstring.

    Parameters: ``gate`` (FC_Gt), ``up`` (FC_Up), ``down`` (FC_Dn) and, for ``width="d"``, ``out_proj`` (W_O).
    """

    config_class = DeconMLPConfig
    repr_fields = ("d_model", "width")
    attention_probabilities: str | None = "decon_mlp mixes no tokens; it has no attention map"

    def __init__(self, config: DeconMLPConfig) -> None:
        super().__init__(config)
        C, Fh = config.d_model, config.hidden
        self.gate = nn.Linear(C, Fh, bias=False)
        self.up = nn.Linear(C, Fh, bias=False)
        self.down = nn.Linear(Fh, C, bias=False)
        self.out_proj = nn.Linear(C, C, bias=False) if config.width == "d" else None

    def new_cache(self, batch_size: int, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> StatelessCache:
        """A :class:`StatelessCache` (no state: outputs depend on their own position only)."""
        return StatelessCache()

    def forward(self, x: Tensor, *, context: Tensor | None = None, cache: StatelessCache | None = None) -> Tensor:
        """``(B, T, C) -> (B, T, C)``, each position alone. ``cache`` only counts the positions consumed."""
        check_layer_input(x, d_model=self.d_model, reference_param=self.gate.weight)
        if context is not None:
            raise ValueError("decon_mlp has no cross-attention: context must be None")
        if cache is not None and not isinstance(cache, StatelessCache):
            raise ValueError(f"cache must be a StatelessCache from layer.new_cache(), got {type(cache).__name__}")
        h = self.down(F.silu(self.gate(x)) * self.up(x))  # (B, T, C)
        if cache is not None:
            cache.advance(x.shape[1])
        return h if self.out_proj is None else self.out_proj(h)  # (B, T, C)


register(MechanismSpec(
    name="decon_mlp",
    description="Deconstructing Attention: per-position gated MLP, no token mixing (4 d^2 params); no decode state",
    make_config=DeconMLPConfig,
    causal=True,
    mixes_tokens=False,
    cache="stateless",
))
