"""The causal-discovery forecaster: a variable-token Transformer encoder whose masks carry prior knowledge.

Shape legend: B windows, N variables, P lags (the look-back window), K tokens, C ``d_model``, L layers.

Spec ``time_series.md`` D.2 (a reconstruction: the paper's method section is not public)::

    x (B, N, P), x[b, j, p] = x_{j, t-P+p}          (lag tau = P - p)
    tokens "variable" (default): e_j       = W_emb x_j + v_j                       K = N
    tokens "lag":                e_(j,tau) = w x_{j,t-tau} + v_j + u_tau           K = N * P (token j * P + p)
    L x [ u + Attn(RMSNorm(u); prior mask),  u + SwiGLU(RMSNorm(u)) ]   (per-token norms and FFN only)
    forecast x̂_{i,t} = w_out . RMSNorm(h_i) + b      (the mean over variable i's tokens with "lag" tokens)

Nothing mixes tokens except the masked attention: no flattening head, no norm across variables, so the prior masks
(:mod:`attnlab.masks.priors`) decide exactly which inputs each forecast may depend on. ``masking="propagate"`` is
construction (a) (one pass, conservative), ``"streams"`` is construction (b) (``N`` streams, exact and not
conservative; the batch is run ``N`` times). With no exclusion both are the unmasked model, run once.

Only lags ``>= 1`` enter, so the forecast of time ``t`` cannot depend on any input at time ``>= t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from attnlab._validation import check_float, check_int
from attnlab.config import PlainConfig
from attnlab.layers.mha import MultiHeadAttentionConfig
from attnlab.masks.priors import check_exclusions, propagated_masks, stream_masks, table_mask
from attnlab.models.common import RMSNorm, ResidualBlock, swiglu_hidden

__all__ = ["CausalForecasterConfig", "CausalForecaster"]

Tokens = Literal["variable", "lag"]
Masking = Literal["propagate", "streams"]


@dataclass(kw_only=True)
class CausalForecasterConfig(PlainConfig):
    """The causal-discovery forecaster's ``[model]`` table (sizes the data decides, ``N`` and ``P``, come from the data
    config).

    Attributes:
        tokens: ``"variable"`` (one token per variable, default) or ``"lag"`` (one per (variable, lag)).
        masking: how exclusions hold across layers: ``"streams"`` (construction b, default: exact, not conservative,
            ``N``-fold batch) or ``"propagate"`` (construction a: one pass, conservative with depth).
        n_layers, d_model, n_heads: the encoder's size.
        ffn_hidden: SwiGLU width (``None``: the usual multiple of 64 above ``8/3 d_model``).
        dropout: on the residual branches and the attention weights (training only).
        norm_eps: RMSNorm epsilon.
    """

    tokens: Tokens = "variable"
    masking: Masking = "streams"
    n_layers: int = 2
    d_model: int = 32
    n_heads: int = 4
    ffn_hidden: int | None = None
    dropout: float = 0.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.tokens not in ("variable", "lag"):
            raise ValueError(f"tokens must be 'variable' or 'lag', got {self.tokens!r}")
        if self.masking not in ("propagate", "streams"):
            raise ValueError(f"masking must be 'streams' (construction b) or 'propagate' (construction a), got "
                             f"{self.masking!r}")
        check_int("n_layers", self.n_layers, 1)
        check_int("d_model", self.d_model, 1)
        check_int("n_heads", self.n_heads, 1)
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        if self.ffn_hidden is not None:
            check_int("ffn_hidden", self.ffn_hidden, 1)
        check_float("dropout", self.dropout, low=0.0, high=1.0)
        check_float("norm_eps", self.norm_eps, low=0.0, low_inclusive=False, high=1.0)

    def same_weights_as(self, other: "CausalForecasterConfig") -> bool:
        """Whether a model of ``other`` has this model's parameters (every field but ``masking``, which only decides
        how the masks are built): the condition for fine-tuning one from the other."""
        mine = {k: v for k, v in vars(self).items() if k != "masking"}
        return isinstance(other, CausalForecasterConfig) and mine == {k: v for k, v in vars(other).items()
                                                                      if k != "masking"}

    def build(self, *, n_vars: int, look_back: int, exclude: Tensor | None = None) -> "CausalForecaster":
        return CausalForecaster(self, n_vars=n_vars, look_back=look_back, exclude=exclude)


class CausalForecaster(nn.Module):
    """See the module docstring. ``forward(x (B, N, P)) -> (B, N)``: the one-step forecast of every variable.

    Args:
        config: the architecture.
        n_vars: ``N >= 1``.
        look_back: ``P >= 1`` lags.
        exclude: ``(N, N)`` bool, ``exclude[i, j]``: ``j`` does not cause ``i`` (row = effect); ``None``: no prior.
    """

    def __init__(self, config: CausalForecasterConfig, *, n_vars: int, look_back: int,
                 exclude: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(config, CausalForecasterConfig):
            raise ValueError(f"config must be a CausalForecasterConfig, got {type(config).__name__}")
        check_int("n_vars", n_vars, 1)
        check_int("look_back", look_back, 1)
        self.config, self.n_vars, self.look_back = config, n_vars, look_back
        N, P, C = n_vars, look_back, config.d_model
        # (the masks are small CPU tables, built on the CPU even under a meta-device context)
        excl = (check_exclusions(exclude, N).cpu() if exclude is not None
                else torch.zeros(N, N, dtype=torch.bool, device="cpu"))
        self.register_buffer("exclude", excl.clone(), persistent=False)
        if config.tokens == "variable":
            self.embed = nn.Linear(P, C)
            token_var = torch.arange(N, device="cpu")
            self.lag_emb = None
        else:
            self.embed = nn.Linear(1, C)
            token_var = torch.arange(N, device="cpu").repeat_interleave(P)  # (K,) token j * P + p carries variable j
            self.lag_emb = nn.Parameter(torch.randn(P, C) * 0.02)
        self.var_emb = nn.Parameter(torch.randn(N, C) * 0.02)
        self.register_buffer("token_var", token_var, persistent=False)
        ffn = config.ffn_hidden if config.ffn_hidden is not None else swiglu_hidden(C)
        self.blocks = nn.ModuleList(
            ResidualBlock(d_model=C, ffn_hidden=ffn, dropout=config.dropout, norm_eps=config.norm_eps,
                          attn=MultiHeadAttentionConfig(d_model=C, n_heads=config.n_heads, mask=None,
                                                        dropout=config.dropout).build(), mechanism="standard")
            for _ in range(config.n_layers))
        self.norm_f = RMSNorm(C, eps=config.norm_eps)
        self.head = nn.Linear(C, 1)
        # The prior masks: none without exclusions; (L, K, K) tables for construction (a); (N, K, K) for (b).
        self.sources: Tensor | None = None
        if not bool(excl.any()):
            self._masks: list | None = None
            self._streams = False
        elif config.masking == "propagate":
            allowed, self.sources = propagated_masks(excl, config.n_layers, token_var)
            self._masks = [table_mask(a, name="prior_propagated") for a in allowed]
            self._streams = False
        else:
            m = table_mask(stream_masks(excl, token_var), name="prior_streams")
            self._masks = [m] * config.n_layers
            self._streams = True

    @property
    def n_tokens(self) -> int:
        return int(self.token_var.numel())

    def tokens(self, x: Tensor) -> Tensor:
        """The input tokens ``(B, K, C)`` of windows ``x (B, N, P)``."""
        if self.config.tokens == "variable":
            return self.embed(x) + self.var_emb  # (B, N, C)
        B, N, P = x.shape
        e = self.embed(x.reshape(B, N * P, 1))  # (B, K, C)
        return e + self.var_emb.repeat_interleave(P, dim=0) + self.lag_emb.repeat(N, 1)  # (B, K, C)

    def forward(self, x: Tensor) -> Tensor:
        N, P = self.n_vars, self.look_back
        if not isinstance(x, Tensor) or x.ndim != 3 or tuple(x.shape[1:]) != (N, P):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be windows (B, N={N}, P={P}) (variables, then lags oldest first), got {got}")
        u = self.tokens(x.to(self.embed.weight.dtype))  # (B, K, C)
        B, K, C = u.shape
        if self._streams:
            u = u.repeat_interleave(N, dim=0)  # (B * N, K, C): row b * N + i is stream i of window b
        for layer, block in enumerate(self.blocks):
            kw = {"mask": self._masks[layer]} if self._masks is not None else None
            u = block(u, attn_kwargs=kw)  # (B or B * N, K, C)
        y = self.head(self.norm_f(u)).squeeze(-1)  # (B or B * N, K)
        if self.config.tokens == "lag":
            y = y.reshape(-1, N, P).mean(dim=-1)  # (B or B * N, N): the mean over each variable's tokens
        if self._streams:
            y = y.reshape(B, N, N).diagonal(dim1=1, dim2=2)  # (B, N): variable i read from stream i
        return y
