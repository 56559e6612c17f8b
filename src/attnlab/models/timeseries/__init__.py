"""Forecasting models over multivariate time series: ``(B, L, V)`` look-back windows to ``(B, T, V)`` forecasts.

* :class:`DLinear`: moving-average trend/seasonal split, one linear map over time per part (baseline).
* :class:`TransformerForecaster`: a causal-in-time Transformer over time steps with attnlab's registered attention.
* :class:`AutoHFormer`: windowed decayed attention over time steps, a coarse guess per segment plus step-wise
  corrections, teacher forcing in training and windowed autoregressive decoding (spec ``time_series.md`` C.6).
* :class:`ForecastModelConfig`: the forecasting task's ``[model]`` table (``arch`` picks the model).

Every model takes ``instance_norm=True``: each window standardised by its own look-back's statistics, the forecast
mapped back (:mod:`attnlab.models.timeseries.instance_norm`).
"""

from attnlab.models.timeseries.autohformer import AutoHFormer, DecayedWindowAttention
from attnlab.models.timeseries.config import (
    ARCHS,
    AutoHFormerConfig,
    DLinearConfig,
    ForecastModelConfig,
    TransformerForecasterConfig,
)
from attnlab.models.timeseries.dlinear import DLinear, moving_average
from attnlab.models.timeseries.transformer import TransformerForecaster

__all__ = ["ARCHS", "AutoHFormer", "AutoHFormerConfig", "DLinear", "DLinearConfig", "DecayedWindowAttention",
           "ForecastModelConfig", "TransformerForecaster", "TransformerForecasterConfig", "moving_average"]
