"""Forecasting models over multivariate time series: ``(B, L, V)`` look-back windows to ``(B, T, V)`` forecasts.

* :class:`DLinear`: moving-average trend/seasonal split, one linear map over time per part (baseline).
* :class:`TransformerForecaster`: a causal-in-time Transformer over time steps with attnlab's registered attention.
* :class:`ForecastModelConfig`: the forecasting task's ``[model]`` table (``arch`` picks the model).
"""

from attnlab.models.timeseries.config import ARCHS, DLinearConfig, ForecastModelConfig, TransformerForecasterConfig
from attnlab.models.timeseries.dlinear import DLinear, moving_average
from attnlab.models.timeseries.transformer import TransformerForecaster

__all__ = ["ARCHS", "DLinear", "DLinearConfig", "ForecastModelConfig", "TransformerForecaster",
           "TransformerForecasterConfig", "moving_average"]
