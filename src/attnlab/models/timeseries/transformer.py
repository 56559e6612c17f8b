"""A small Transformer forecaster, causal in time, built from attnlab's registered attention and shared blocks.

Shape legend: B batch, L look-back (tokens are time steps), T horizon, V channels, F time features, C ``d_model``.

    x (B, L, V) [; x_marks (B, L, F)] -> u_p = W_in [x_p; marks_p]           (B, L, C)
        -> n_layers x [ u + Attn(RMSNorm(u)),  u + SwiGLU(RMSNorm(u)) ]     causal attention, RoPE positions
        -> RMSNorm -> h (B, L, C);   forecast = W_head h_L  reshaped to     (B, T, V)

The state ``h_p`` of step ``p`` depends on steps ``<= p`` only (:meth:`TransformerForecaster.hidden`; the tests
check it by perturbation and by gradient). The forecast is read from the last step's state in one linear map (the
direct multi-step form: one forward per window). Positions come from RoPE inside the attention layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from attnlab.models.common import RMSNorm, ResidualBlock, gpt2_init_
from attnlab.models.timeseries._checks import check_window
from attnlab.models.timeseries.config import TransformerForecasterConfig
from attnlab.models.timeseries.instance_norm import WindowScale

__all__ = ["TransformerForecaster"]


class TransformerForecaster(nn.Module):
    """See the module docstring. ``forward(x (B, L, V), x_marks=None (B, L, F)) -> (B, T, V)``."""

    def __init__(self, config: TransformerForecasterConfig, *, look_back: int, horizon: int, n_channels: int,
                 n_time_features: int = 0) -> None:
        super().__init__()
        if not isinstance(config, TransformerForecasterConfig):
            raise ValueError(f"config must be a TransformerForecasterConfig, got {type(config).__name__}")
        self.config = config
        self.look_back, self.horizon = look_back, horizon
        self.n_channels, self.n_time_features = n_channels, n_time_features
        C = config.d_model
        self.in_proj = nn.Linear(n_channels + n_time_features, C)
        self.drop = nn.Dropout(config.dropout)
        stack = config.stack
        self.blocks = nn.ModuleList(
            ResidualBlock(d_model=C, attn=stack.config(i).build(), ffn_hidden=config.resolved_ffn_hidden,
                          dropout=config.dropout, norm_eps=config.norm_eps, mechanism=name)
            for i, name in enumerate(stack.mechanisms)
        )
        self.norm_f = RMSNorm(C, eps=config.norm_eps)
        self.head = nn.Linear(C, horizon * n_channels)
        gpt2_init_(self, list(self.blocks), d_model=C, embeddings=[])

    def hidden(self, x: Tensor, x_marks: Tensor | None = None) -> Tensor:
        """The top-layer state of every step, ``(B, L', C)`` for ``x (B, L', V)`` of any length ``L' >= 1``; step
        ``p``'s state depends on steps ``<= p`` only."""
        check_window(x, look_back=None, n_channels=self.n_channels)
        if self.n_time_features:
            if x_marks is None:
                raise ValueError(f"this model was built with {self.n_time_features} time features: pass x_marks "
                                 f"(B, L, {self.n_time_features})")
            if tuple(x_marks.shape) != (*x.shape[:2], self.n_time_features):
                raise ValueError(f"x_marks must have shape {(*x.shape[:2], self.n_time_features)}, got "
                                 f"{tuple(x_marks.shape)}")
            x = torch.cat([x, x_marks.to(x.dtype)], dim=-1)  # (B, L, V + F)
        u = self.drop(self.in_proj(x))  # (B, L, C)
        for block in self.blocks:
            u = block(u)  # (B, L, C)
        return self.norm_f(u)

    def forward(self, x: Tensor, x_marks: Tensor | None = None) -> Tensor:
        check_window(x, look_back=self.look_back, n_channels=self.n_channels)
        scale = WindowScale.of(x) if self.config.instance_norm else None
        h = self.hidden(scale.normalise(x) if scale is not None else x, x_marks)[:, -1]  # (B, C)
        y = self.head(h).view(x.shape[0], self.horizon, self.n_channels)  # (B, T, V)
        return scale.restore(y) if scale is not None else y


TransformerForecasterConfig.model_class = TransformerForecaster
