"""Configuration of the forecasting models: one ``[model]`` table, ``arch`` choosing the model and one sub-table per
model (``[model.dlinear]``, ``[model.transformer]``).

The sizes the data decides (look-back ``L``, horizon ``T``, channels ``V``, time features ``F``) are not part of
these configs: they belong to the data config (:class:`attnlab.tasks.forecast.ForecastDataConfig`), and the task
passes them to :meth:`ForecastModelConfig.build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from attnlab._validation import check_bool, check_int
from attnlab.config import PlainConfig
from attnlab.models.common import Widths
from attnlab.models.stack import ResolvedStack, resolve_stack

__all__ = ["DLinearConfig", "TransformerForecasterConfig", "ForecastModelConfig", "ARCHS"]

ARCHS = ("dlinear", "transformer")


@dataclass(kw_only=True)
class DLinearConfig(PlainConfig):
    """A DLinear-style model (Zeng, Chen, Zhang, Xu, "Are Transformers Effective for Time Series Forecasting?",
    AAAI 2023, arXiv 2205.13504): a moving average splits each channel's look-back into trend and remainder
    (seasonal), and one linear map over time per part gives the forecast.

    Attributes:
        kernel_size: the moving average's width in steps (odd: the average is centred; the ends are padded by
            repeating the first and last value). 25 is the default of the DLinear release.
        individual: one pair of linear maps per channel instead of one pair shared by every channel.
    """

    model_class: ClassVar[type[nn.Module]]  # set by attnlab.models.timeseries.dlinear
    kernel_size: int = 25
    individual: bool = False

    def __post_init__(self) -> None:
        check_int("kernel_size", self.kernel_size, 1)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={self.kernel_size} must be odd (a centred moving average)")
        check_bool("individual", self.individual)


@dataclass(kw_only=True)
class TransformerForecasterConfig(Widths, PlainConfig):
    """A small decoder-only Transformer over time steps whose attention is any registered **causal** mechanism
    (default ``"standard"``: full causal softmax attention), built from the shared residual blocks
    (:class:`attnlab.models.common.ResidualBlock`) and stack (:func:`attnlab.models.stack.resolve_stack`).

    Attributes:
        n_layers, d_model, n_heads, head_dim, ffn_hidden, dropout, rope_base, norm_eps: as in
            :class:`attnlab.models.lm.LMConfig`.
        attention: a registry name for every layer (must be causal).
        attention_options: per mechanism name, options for its layer config.
    """

    model_class: ClassVar[type[nn.Module]]  # set by attnlab.models.timeseries.transformer
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    head_dim: int | None = None
    attention: str = "standard"
    attention_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    ffn_hidden: int | None = None
    dropout: float = 0.1
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads"):
            check_int(name, getattr(self, name), 1)
        self.check_widths()
        self._stack: ResolvedStack = resolve_stack(
            attention=self.attention, schedule="uniform", n_layers=self.n_layers, options=self.attention_options,
            parity=False, d_model=self.d_model, n_heads=self.n_heads, head_dim=self.resolved_head_dim,
            rope_base=self.rope_base, dropout=self.dropout, causal=True, owner="a forecaster that is causal in time",
        )

    @property
    def stack(self) -> ResolvedStack:
        return self._stack


@dataclass(kw_only=True)
class ForecastModelConfig(PlainConfig):
    """The forecasting task's model: ``arch`` picks one, its sub-table configures it.

    Attributes:
        arch: ``"dlinear"`` (:class:`~attnlab.models.timeseries.DLinear`) or ``"transformer"``
            (:class:`~attnlab.models.timeseries.TransformerForecaster`).
        dlinear: the DLinear settings (used when ``arch == "dlinear"``).
        transformer: the Transformer settings (used when ``arch == "transformer"``).
    """

    arch: Literal["dlinear", "transformer"] = "dlinear"
    dlinear: DLinearConfig = field(default_factory=DLinearConfig)
    transformer: TransformerForecasterConfig = field(default_factory=TransformerForecasterConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {', '.join(map(repr, ARCHS))}, got {self.arch!r}")

    def build(self, *, look_back: int, horizon: int, n_channels: int, n_time_features: int = 0) -> nn.Module:
        """The model of ``arch`` for windows of ``look_back`` steps of ``n_channels`` channels (plus
        ``n_time_features`` time features per step) and forecasts of ``horizon`` steps."""
        sizes = dict(look_back=look_back, horizon=horizon, n_channels=n_channels, n_time_features=n_time_features)
        part = self.dlinear if self.arch == "dlinear" else self.transformer
        # model_class is set by the model's module (imported with the package), so this module never imports it
        return type(part).model_class(part, **sizes)
