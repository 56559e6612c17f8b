"""A DLinear-style forecaster (Zeng et al., AAAI 2023, arXiv 2205.13504): trend/seasonal split, a linear map per part.

Shape legend: B batch, L look-back, T horizon, V channels, K moving-average kernel.

    x (B, L, V) -> trend = moving_average(x), seasonal = x - trend
               -> y = W_s · seasonal + b_s + W_t · trend + b_t    (maps over time, L -> T, per channel)  (B, T, V)

Each channel is forecast from its own past only (channel independence); ``individual=True`` gives every channel its
own pair of maps. Time features are not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.models.timeseries._checks import check_window
from attnlab.models.timeseries.config import DLinearConfig
from attnlab.models.timeseries.instance_norm import WindowScale

__all__ = ["DLinear", "moving_average"]


def moving_average(x: Tensor, kernel_size: int) -> Tensor:
    """Centred moving average over time of ``x (B, L, V)`` with an odd ``kernel_size``; the ends are padded with
    ``(kernel_size - 1) / 2`` copies of the first and last step, so the output has ``L`` steps too."""
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"kernel_size={kernel_size} must be odd and positive")
    pad = (kernel_size - 1) // 2
    front = x[:, :1].expand(-1, pad, -1)  # (B, pad, V)
    back = x[:, -1:].expand(-1, pad, -1)  # (B, pad, V)
    padded = torch.cat([front, x, back], dim=1).transpose(1, 2)  # (B, V, L + 2 pad)
    return F.avg_pool1d(padded, kernel_size, stride=1).transpose(1, 2)  # (B, L, V)


class _TimeMap(nn.Module):
    """A linear map over time ``(B, L, V) -> (B, T, V)``: shared by the channels, or one per channel."""

    def __init__(self, look_back: int, horizon: int, n_channels: int, individual: bool) -> None:
        super().__init__()
        self.individual = individual
        if individual:
            bound = 1.0 / look_back**0.5  # nn.Linear's default initialisation range, per channel
            self.weight = nn.Parameter(torch.empty(n_channels, horizon, look_back).uniform_(-bound, bound))
            self.bias = nn.Parameter(torch.empty(n_channels, horizon).uniform_(-bound, bound))
        else:
            self.linear = nn.Linear(look_back, horizon)

    def forward(self, x: Tensor) -> Tensor:
        if self.individual:
            return torch.einsum("vtl,blv->btv", self.weight, x) + self.bias.T  # (B, T, V)
        return self.linear(x.transpose(1, 2)).transpose(1, 2)  # (B, T, V)


class DLinear(nn.Module):
    """See the module docstring. ``forward(x (B, L, V), x_marks=None) -> (B, T, V)``."""

    def __init__(self, config: DLinearConfig, *, look_back: int, horizon: int, n_channels: int,
                 n_time_features: int = 0) -> None:
        super().__init__()
        if not isinstance(config, DLinearConfig):
            raise ValueError(f"config must be a DLinearConfig, got {type(config).__name__}")
        self.config = config
        self.look_back, self.horizon, self.n_channels = look_back, horizon, n_channels
        self.seasonal = _TimeMap(look_back, horizon, n_channels, config.individual)
        self.trend = _TimeMap(look_back, horizon, n_channels, config.individual)

    def decompose(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(seasonal, trend)``, each ``(B, L, V)``, with ``seasonal + trend == x``."""
        trend = moving_average(x, self.config.kernel_size)  # (B, L, V)
        return x - trend, trend

    def forward(self, x: Tensor, x_marks: Tensor | None = None) -> Tensor:
        check_window(x, look_back=self.look_back, n_channels=self.n_channels)
        scale = WindowScale.of(x) if self.config.instance_norm else None
        seasonal, trend = self.decompose(scale.normalise(x) if scale is not None else x)
        y = self.seasonal(seasonal) + self.trend(trend)  # (B, T, V)
        return scale.restore(y) if scale is not None else y


DLinearConfig.model_class = DLinear
