"""Instance normalisation of look-back windows, an option of every forecasting model (``instance_norm=True``).

Each window is standardised per channel by its own look-back's mean and standard deviation before the model, and
the forecast is mapped back after it::

    m = mean_p x_p,  s = sqrt(var_p x_p + eps)        per window and channel, (B, 1, V), over the look-back only
    forecast(x) = s * model((x - m) / s) + m          (a teacher-forced target is standardised with the same m, s)

This is the "series stationarisation" of Liu, Wu, Wang and Long (Non-stationary Transformers, NeurIPS 2022) and
RevIN of Kim et al. (ICLR 2022) without its learnable affine map; the released AutoHFormer code wraps its model in
such a normalisation (spec ``time_series.md`` C.7). The statistics come from the look-back alone, so the forecast
stays causal in time, and it follows any per-window shift of a channel exactly (and a rescaling up to ``eps``).
Written here rather than taken from a library: it is two reductions, and no maintained package offers it as a
plain function.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["EPS", "WindowScale"]

#: Added to the variance before the square root (RevIN's default), so a constant channel does not divide by zero.
EPS = 1e-5


@dataclass(frozen=True)
class WindowScale:
    """The per-window, per-channel statistics of look-back windows: ``mean`` and ``std``, each ``(B, 1, V)``."""

    mean: Tensor
    std: Tensor

    @classmethod
    def of(cls, x: Tensor, eps: float = EPS) -> "WindowScale":
        """The statistics of look-back windows ``x (B, L, V)`` (population variance over the ``L`` steps)."""
        mean = x.mean(dim=1, keepdim=True)  # (B, 1, V)
        std = torch.sqrt(x.var(dim=1, keepdim=True, correction=0) + eps)  # (B, 1, V)
        return cls(mean, std)

    def normalise(self, v: Tensor) -> Tensor:
        """``(v - mean) / std`` for any ``(B, *, V)`` of the same windows (the look-back, a target, a forecast)."""
        return (v - self.mean) / self.std

    def restore(self, v: Tensor) -> Tensor:
        """The inverse of :meth:`normalise`: ``v * std + mean``."""
        return v * self.std + self.mean
